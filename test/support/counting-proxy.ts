/**
 * A transparent HTTP reverse proxy that records every request, placed between
 * the cache (or skopeo) and the upstream registry so a test can assert how
 * many upstream requests a pull made.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * One proxied request. `path` includes the query string; `status` is what the
 * client got: the target's status, 502 when the target was unreachable, or 0
 * when the client went away before the target answered.
 */
export interface ProxiedRequest {
  method: string;
  path: string;
  status: number;
}

/** A running counting proxy. */
export interface CountingProxy {
  /** `http://127.0.0.1:PORT` (no trailing slash) */
  url: string;
  /** Recorded requests in the order their response status was known. `reset()` empties this same array. */
  requests: ProxiedRequest[];
  /** Number of recorded requests, optionally only those matching `filter`. */
  count(filter?: (r: ProxiedRequest) => boolean): number;
  /** Forget all recorded requests. */
  reset(): void;
  /** Close the listener and all open connections (client and upstream). Idempotent. */
  stop(): Promise<void>;
}

/** RFC 7230 §6.1 hop-by-hop headers, never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function filterHeaders(raw: string[]): Array<[string, string]> {
  // rawHeaders keeps case, order and repeated headers (e.g. several Link headers).
  const connectionTokens = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].toLowerCase() === 'connection') {
      for (const t of raw[i + 1].split(',')) connectionTokens.add(t.trim().toLowerCase());
    }
  }
  const out: Array<[string, string]> = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    if (HOP_BY_HOP.has(k) || connectionTokens.has(k)) continue;
    out.push([raw[i], raw[i + 1]]);
  }
  return out;
}

function toOutgoing(pairs: Array<[string, string]>): Record<string, string | string[]> {
  const h: Record<string, string | string[]> = {};
  for (const [k, v] of pairs) {
    const key = k.toLowerCase();
    const prev = h[key];
    if (prev === undefined) h[key] = v;
    else h[key] = Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return h;
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
      requests.push({ method, path, status });
    };
    const upstreamReq = http.request(
      {
        protocol: 'http:',
        hostname: t.hostname,
        port: t.port || 80,
        method,
        path: basePath + path,
        headers: toOutgoing(filterHeaders(req.rawHeaders)),
        agent,
        // Node would add its own Host otherwise; keep the client's (set in headers).
        setHost: false,
      },
      (upRes) => {
        const status = upRes.statusCode ?? 502;
        record(status);
        const headers = filterHeaders(upRes.rawHeaders);
        // writeHead with a flat raw array keeps duplicates and header casing.
        res.writeHead(status, upRes.statusMessage, headers.flat());
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
  server.keepAliveTimeout = 5000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let stopped: Promise<void> | undefined;

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    count: (filter) => (filter ? requests.filter(filter).length : requests.length),
    reset: () => {
      requests.length = 0;
    },
    stop: () => {
      stopped ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      });
      return stopped;
    },
  };
}
