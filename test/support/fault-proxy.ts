/**
 * A fault-injecting HTTP reverse proxy for e2e tests: placed between the cache and a real upstream registry
 * (like ./counting-proxy.ts, which it extends), it forwards every request unchanged unless a switched-on fault
 * matches it (method + path regular expression), and then makes the "upstream" misbehave in one of the ways a
 * real registry does on a bad day:
 *
 * - `status`: answers itself with a status (e.g. 429 + `Retry-After: 7`, or 500) and an OCI error body; the
 *   target is not asked;
 * - `hang`: accepts the request and never answers (until the client goes away or the proxy stops);
 * - `truncate`: forwards the target's status and headers (with its `Content-Length`), then only the first
 *   `afterBytes` bytes of the body, and closes the connection (after `pauseMs`, when given);
 * - `corrupt`: forwards status, headers and a body of the same length with `length` bytes flipped (XOR 0xff)
 *   from `offset` (default: the middle of the body when its length is known, else byte 0); with `pauseMs`, the
 *   body's last byte is held back that long (so a client can be seen reading a body still arriving);
 * - `hold`: forwards status, headers and the body but its last byte, which waits until `until` resolves (a transfer
 *   that lasts exactly as long as the test wants, without timing).
 *
 * A fault applies to its next `times` matching requests (every one when absent); the first matching fault in
 * the order they were added wins. Every request is recorded with the fault applied (if any).
 */
import http from 'node:http';
import { Transform } from 'node:stream';
import { forwardableHeaders, listenOnLoopback, outgoingHeaders, requestLog, stopper, type RequestLog } from './reverse-proxy.js';

/** Which requests a fault applies to. `path` is tested against the path with its query string. */
export interface FaultMatch {
  /** `GET`, `HEAD`, ... (case-insensitive); any method when absent. */
  method?: string;
  path: RegExp;
  /** Apply to this many matching requests, then switch off; unlimited when absent. */
  times?: number;
}

/** What a fault does. */
export type FaultAction =
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: string }
  | { kind: 'hang' }
  | { kind: 'truncate'; afterBytes: number; pauseMs?: number }
  | { kind: 'corrupt'; offset?: number; length?: number; pauseMs?: number }
  | { kind: 'hold'; until: Promise<void> };

export type FaultSpec = FaultMatch & FaultAction;

/** A switched-on fault: how often it fired; `remove()` switches it off. */
export interface FaultHandle {
  readonly spec: FaultSpec;
  readonly hits: number;
  remove(): void;
}

/**
 * One request through the proxy. `status` is what the client was sent (0: no answer, e.g. a hang or the client
 * went away first); `fault` is the kind applied; `bodyBytes` the body bytes sent (forwarded requests only).
 */
export interface FaultedRequest {
  method: string;
  path: string;
  status: number;
  fault?: FaultAction['kind'];
  bodyBytes?: number;
}

/** A running fault proxy. */
export interface FaultProxy extends RequestLog<FaultedRequest> {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** Switches a fault on. */
  add(spec: FaultSpec): FaultHandle;
  /** Switches every fault off. */
  clear(): void;
  /** Requests currently held open by `hang` faults. */
  readonly hanging: number;
  /** Closes the listener and every connection (hung ones included). Idempotent. */
  stop(): Promise<void>;
}

const ERROR_CODE: Record<number, string> = { 429: 'TOOMANYREQUESTS', 401: 'UNAUTHORIZED', 403: 'DENIED', 404: 'MANIFEST_UNKNOWN' };

/** A transform that flips (XOR 0xff) bytes [from, from + length) of the stream, keeping its length. */
function flipper(from: number, length: number): Transform {
  let pos = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      const start = pos;
      pos += chunk.length;
      const lo = Math.max(from, start);
      const hi = Math.min(from + length, pos);
      if (lo >= hi) return cb(null, chunk);
      const copy = Buffer.from(chunk);
      for (let i = lo; i < hi; i++) copy[i - start] ^= 0xff;
      cb(null, copy);
    },
  });
}

/** A transform that waits for `release` before passing on byte `at` (and the rest) of the stream. */
function holdBack(at: number, release: () => Promise<void>): Transform {
  let pos = 0;
  let held = false;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      const start = pos;
      pos += chunk.length;
      if (held || at >= pos) return cb(null, chunk);
      held = true;
      if (at > start) this.push(chunk.subarray(0, at - start));
      void release().then(() => cb(null, chunk.subarray(Math.max(0, at - start))));
    },
  });
}

/** Starts a fault proxy on 127.0.0.1:0 forwarding to `target` (`http://127.0.0.1:PORT`). */
export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const t = new URL(target);
  if (t.protocol !== 'http:') throw new Error(`fault proxy only supports http targets, got ${target}`);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const requests: FaultedRequest[] = [];
  const faults: Array<{ spec: FaultSpec; hits: number; removed: boolean }> = [];
  const hung = new Set<http.ServerResponse>();

  function pick(method: string, path: string) {
    for (const f of faults) {
      if (f.removed) continue;
      if (f.spec.method && f.spec.method.toUpperCase() !== method) continue;
      f.spec.path.lastIndex = 0;
      if (!f.spec.path.test(path)) continue;
      f.hits++;
      if (f.spec.times !== undefined && f.hits >= f.spec.times) f.removed = true;
      return f.spec;
    }
    return undefined;
  }

  const server = http.createServer((req, res) => {
    const method = (req.method ?? 'GET').toUpperCase();
    const path = req.url ?? '/';
    const fault = pick(method, path);
    const entry: FaultedRequest = { method, path, status: 0, ...(fault ? { fault: fault.kind } : {}) };
    requests.push(entry);

    if (fault?.kind === 'status') {
      req.resume();
      const body =
        fault.body ??
        JSON.stringify({ errors: [{ code: ERROR_CODE[fault.status] ?? 'UNKNOWN', message: `fault proxy: injected ${fault.status}` }] });
      entry.status = fault.status;
      res.writeHead(fault.status, { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)), ...fault.headers });
      res.end(method === 'HEAD' ? undefined : body);
      return;
    }
    if (fault?.kind === 'hang') {
      req.resume();
      hung.add(res);
      res.on('close', () => hung.delete(res));
      return;
    }

    const upstreamReq = http.request(
      {
        protocol: 'http:',
        hostname: t.hostname,
        port: t.port || 80,
        method,
        path,
        headers: outgoingHeaders(req.rawHeaders),
        agent,
        setHost: false,
      },
      (upRes) => {
        const status = upRes.statusCode ?? 502;
        entry.status = status;
        entry.bodyBytes = 0;
        res.writeHead(status, upRes.statusMessage, forwardableHeaders(upRes.rawHeaders));
        upRes.on('error', () => res.destroy());
        upRes.on('aborted', () => res.destroy());
        if (fault?.kind === 'truncate') {
          let sent = 0;
          let cut = false;
          const cutOff = () => {
            cut = true;
            // Drop the upstream body without the handlers above destroying the client's socket before it flushed.
            upRes.removeAllListeners('error').removeAllListeners('aborted').on('error', () => undefined);
            upRes.destroy();
            // socket.end() flushes what was written, then closes: the client gets the bytes, then EOF mid-body.
            const socket = res.socket;
            if (socket) {
              socket.end();
              setTimeout(() => socket.destroy(), 1000).unref();
            } else {
              res.destroy();
            }
          };
          if (fault.afterBytes <= 0) {
            res.flushHeaders();
            cutOff();
            return;
          }
          upRes.on('data', (chunk: Buffer) => {
            if (cut) return;
            const take = Math.min(chunk.length, fault.afterBytes - sent);
            sent += take;
            entry.bodyBytes = sent;
            res.write(take === chunk.length ? chunk : chunk.subarray(0, take));
            if (sent >= fault.afterBytes) {
              cut = true;
              upRes.pause();
              if (fault.pauseMs) setTimeout(cutOff, fault.pauseMs).unref();
              else cutOff();
            }
          });
          upRes.on('end', () => {
            // The body was no longer than afterBytes: it went through whole (nothing to cut).
            if (!cut) res.end();
          });
          return;
        }
        const counter = new Transform({
          transform(chunk: Buffer, _enc, cb) {
            entry.bodyBytes! += chunk.length;
            cb(null, chunk);
          },
        });
        if (fault?.kind === 'corrupt') {
          const length = Number(upRes.headers['content-length']);
          const offset = fault.offset ?? (Number.isFinite(length) && length > 0 ? Math.floor(length / 2) : 0);
          const piped = upRes.pipe(flipper(offset, fault.length ?? 1));
          const { pauseMs } = fault;
          const pause = () => new Promise<void>((r) => setTimeout(r, pauseMs).unref());
          (pauseMs && Number.isFinite(length) && length > 0 ? piped.pipe(holdBack(length - 1, pause)) : piped).pipe(counter).pipe(res);
        } else if (fault?.kind === 'hold') {
          const length = Number(upRes.headers['content-length']);
          const { until } = fault;
          (Number.isFinite(length) && length > 0 ? upRes.pipe(holdBack(length - 1, () => until)) : upRes).pipe(counter).pipe(res);
        } else {
          upRes.pipe(counter).pipe(res);
        }
      },
    );
    if (!req.headers.host) upstreamReq.setHeader('host', t.host);
    upstreamReq.on('error', (err) => {
      if (!res.headersSent) {
        entry.status = 502;
        res.writeHead(502, { 'Content-Type': 'text/plain' });
        res.end(`fault proxy: upstream ${target} unreachable: ${err.message}\n`);
      } else {
        res.destroy(err);
      }
    });
    req.pipe(upstreamReq);
    res.on('close', () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
  });
  return {
    url: await listenOnLoopback(server),
    ...requestLog(requests),
    add(spec) {
      const f = { spec, hits: 0, removed: false };
      faults.push(f);
      return {
        spec,
        get hits() {
          return f.hits;
        },
        remove() {
          f.removed = true;
        },
      };
    },
    clear() {
      for (const f of faults) f.removed = true;
      faults.length = 0;
    },
    get hanging() {
      return hung.size;
    },
    stop: stopper(server, agent, () => {
      for (const r of hung) r.destroy();
      hung.clear();
    }),
  };
}
