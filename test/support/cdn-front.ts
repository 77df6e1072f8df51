/**
 * A registry with a CDN, as Docker Hub, registry.k8s.io or ghcr.io are: a front on loopback passes every request
 * through to Debian's docker-registry (distribution 2.8, whatever auth it has: Basic, token), except a blob GET the
 * registry would answer 2xx, which it answers with a 307 to a second host — the "CDN" — at a signed, expiring URL
 * that needs no credentials (like a presigned S3 or CloudFront URL). The CDN serves the blob's bytes straight from
 * the registry's filesystem storage (`docker/registry/v2/blobs/<alg>/<xx>/<hex>/data`, distribution's layout), so
 * what it serves is exactly what the registry holds. (Distribution itself redirects only with cloud storage
 * drivers, `storage.redirect`; its filesystem driver cannot.)
 *
 * Both record every request (the CDN also whether it carried an `Authorization` header: it never should). The
 * CDN can be slowed to `cdnBytesPerSecond` (a slow upstream for the waiting benchmark). Loopback only.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { forwardableHeaders, listenOnLoopback, outgoingHeaders, stopper } from './reverse-proxy.js';

/** One request the front or the CDN saw. */
export interface CdnFrontRequest {
  method: string;
  path: string;
  status: number;
  /** CDN only: the request carried an Authorization header. */
  authorization?: boolean;
}

/** A running front + CDN. */
export interface CdnFront {
  /** The registry's address as clients use it: `http://127.0.0.1:PORT`. */
  url: string;
  /** The CDN's `host:port` (a different port: another host for the cache's address checks and credentials). */
  cdnHost: string;
  front: CdnFrontRequest[];
  cdn: CdnFrontRequest[];
  stop(): Promise<void>;
}

const BLOB_GET = /^\/v2\/(.+)\/blobs\/(sha256):([a-f0-9]{64})(?:\?.*)?$/;

/** Passes bytes on at about `bytesPerSecond` (chunks of at most 64 KiB, paced). */
function throttle(bytesPerSecond: number): Transform {
  const started = Date.now();
  let sent = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      const pieces: Buffer[] = [];
      for (let i = 0; i < chunk.length; i += 64 * 1024) pieces.push(chunk.subarray(i, i + 64 * 1024));
      const next = () => {
        const piece = pieces.shift();
        if (!piece) return cb();
        sent += piece.length;
        this.push(piece);
        setTimeout(next, Math.max(0, started + (sent / bytesPerSecond) * 1000 - Date.now()));
      };
      next();
    },
  });
}

/**
 * Starts the front for the registry at `registryUrl` whose filesystem storage root is `registryDataDir`; CDN URLs
 * live `urlSeconds` (default 600).
 */
export async function startCdnFront(registryUrl: string, registryDataDir: string, opts: { urlSeconds?: number; cdnBytesPerSecond?: number } = {}): Promise<CdnFront> {
  const target = new URL(registryUrl);
  const key = Buffer.from('cdn-front-signing-key');
  const sign = (path: string, expires: number) => createHmac('sha256', key).update(`${path}\n${expires}`).digest('hex');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const front: CdnFrontRequest[] = [];
  const cdnLog: CdnFrontRequest[] = [];
  let cdnBase = '';

  const cdn = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://cdn');
    const record = (status: number) => cdnLog.push({ method: req.method ?? 'GET', path: url.pathname, status, authorization: req.headers.authorization !== undefined });
    const m = /^\/blobs\/(sha256)\/([a-f0-9]{64})$/.exec(url.pathname);
    const expires = Number(url.searchParams.get('expires'));
    const sig = Buffer.from(url.searchParams.get('signature') ?? '', 'hex');
    const want = Buffer.from(sign(url.pathname, expires), 'hex');
    if (!m || !(expires * 1000 > Date.now()) || sig.length !== want.length || !timingSafeEqual(sig, want)) {
      record(403);
      return void res.writeHead(403, { 'Content-Length': '0' }).end();
    }
    const file = join(registryDataDir, 'docker/registry/v2/blobs', m[1], m[2].slice(0, 2), m[2], 'data');
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      record(404);
      return void res.writeHead(404, { 'Content-Length': '0' }).end();
    }
    record(200);
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': String(size) });
    if (req.method === 'HEAD') return void res.end();
    const source = createReadStream(file, { highWaterMark: 1024 * 1024 });
    const done = opts.cdnBytesPerSecond ? pipeline(source, throttle(opts.cdnBytesPerSecond), res) : pipeline(source, res);
    done.catch(() => res.destroy());
  });

  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const blob = method === 'GET' ? BLOB_GET.exec(path) : null;
    /** Sends `as` to the registry with the client's headers; `answer` gets its response. */
    const ask = (as: string, answer: (up: http.IncomingMessage) => void) => {
      const upstream = http.request({ protocol: 'http:', hostname: target.hostname, port: target.port, method: as, path, headers: outgoingHeaders(req.rawHeaders), agent }, answer);
      upstream.on('error', () => {
        front.push({ method, path, status: 502 });
        if (!res.headersSent) res.writeHead(502, { 'Content-Length': '0' });
        res.end();
      });
      return upstream;
    };
    /** The registry's answer as is. Either side may go away mid-body (a client that cancels, the registry stopping). */
    const passOn = (up: http.IncomingMessage) => {
      front.push({ method, path, status: up.statusCode ?? 502 });
      res.writeHead(up.statusCode ?? 502, forwardableHeaders(up.rawHeaders));
      pipeline(up, res).catch(() => res.destroy());
    };
    if (!blob) return void req.pipe(ask(method, passOn));
    // A blob GET is asked of the registry as a HEAD (same credentials): 2xx → the CDN URL; anything else (a 401
    // challenge, a 404) is the registry's answer to the GET itself, asked again as a GET so that its headers
    // (Content-Length) and body agree — a HEAD's Content-Length over no body would leave the client waiting.
    ask('HEAD', (head) => {
      head.resume();
      const status = head.statusCode ?? 502;
      if (status < 200 || status >= 300) return void ask('GET', passOn).end();
      front.push({ method, path, status: 307 });
      const cdnPath = `/blobs/${blob[2]}/${blob[3]}`;
      const expires = Math.floor(Date.now() / 1000) + (opts.urlSeconds ?? 600);
      res.writeHead(307, { Location: `${cdnBase}${cdnPath}?expires=${expires}&signature=${sign(cdnPath, expires)}`, 'Content-Length': '0' });
      res.end();
    }).end();
  });

  cdnBase = await listenOnLoopback(cdn);
  const url = await listenOnLoopback(server);
  const stopFront = stopper(server, agent);
  const stopCdn = stopper(cdn, new http.Agent());
  return {
    url,
    cdnHost: new URL(cdnBase).host,
    front,
    cdn: cdnLog,
    stop: async () => {
      await Promise.all([stopFront(), stopCdn()]);
    },
  };
}
