/**
 * A transparent HTTP reverse proxy that records every request, placed between
 * the cache (or skopeo) and the upstream registry so a test can assert how
 * many upstream requests a pull made.
 */
import http from 'node:http';
import { forwardableHeaders, listenOnLoopback, outgoingHeaders, requestLog, stopper, type RequestLog } from './reverse-proxy.js';

/**
 * One proxied request. `path` includes the query string; `status` is what the
 * client got: the target's status, 502 when the target was unreachable, or 0
 * when the client went away before the target answered.
 */
export interface ProxiedRequest {
  method: string;
  path: string;
  status: number;
  /** The request's `X-Amz-Target` header, when it has one (a DynamoDB operation: `DynamoDB_20120810.GetItem`). */
  amzTarget?: string;
}

/** A running counting proxy. `requests`: recorded in the order their response status was known. */
export interface CountingProxy extends RequestLog<ProxiedRequest> {
  /** `http://127.0.0.1:PORT` (no trailing slash) */
  url: string;
  /** Close the listener and all open connections (client and upstream). Idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts a proxy on 127.0.0.1:0 forwarding to `target` (e.g. `http://127.0.0.1:5000`).
 * Method, path+query, headers (minus hop-by-hop; `Host` is kept as the client sent it,
 * so the registry builds Location URLs that point back at the proxy) and the body are
 * streamed to the target; status, headers (Location, WWW-Authenticate, Docker-Content-Digest...)
 * and body are streamed back unchanged. Target down → 502.
 */
export async function startCountingProxy(target: string): Promise<CountingProxy> {
  const t = new URL(target);
  if (t.protocol !== 'http:') throw new Error(`counting proxy only supports http targets, got ${target}`);
  const basePath = t.pathname.replace(/\/$/, '');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const requests: ProxiedRequest[] = [];

  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    let recorded = false;
    const record = (status: number) => {
      if (recorded) return;
      recorded = true;
      const amzTarget = req.headers['x-amz-target'];
      requests.push({ method, path, status, ...(typeof amzTarget === 'string' ? { amzTarget } : {}) });
    };
    const upstreamReq = http.request(
      {
        protocol: 'http:',
        hostname: t.hostname,
        port: t.port || 80,
        method,
        path: basePath + path,
        headers: outgoingHeaders(req.rawHeaders),
        agent,
        // Node would add its own Host otherwise; keep the client's (set in headers).
        setHost: false,
      },
      (upRes) => {
        const status = upRes.statusCode ?? 502;
        record(status);
        // writeHead with a flat raw array keeps duplicates and header casing.
        res.writeHead(status, upRes.statusMessage, forwardableHeaders(upRes.rawHeaders));
        upRes.pipe(res);
        upRes.on('error', () => res.destroy());
        upRes.on('aborted', () => res.destroy());
      },
    );
    if (!req.headers.host) upstreamReq.setHeader('host', t.host);
    upstreamReq.on('error', (err) => {
      if (!res.headersSent) {
        record(502);
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`counting proxy: upstream ${target} unreachable: ${err.message}\n`);
      } else {
        res.destroy(err);
      }
    });
    req.pipe(upstreamReq);
    req.on('aborted', () => upstreamReq.destroy());
    res.on('close', () => {
      record(0); // no-op if already recorded
      if (!res.writableFinished) upstreamReq.destroy();
    });
  });
  return { url: await listenOnLoopback(server), ...requestLog(requests), stop: stopper(server, agent) };
}
