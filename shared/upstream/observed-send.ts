/**
 * Observing every upstream request (exchange.ts sends each one through {@link observedSend}): it is counted in the
 * metrics (`pullthrough_upstream_requests_total{rule,method,status}`, `pullthrough_upstream_bytes_total{rule}`)
 * and in the current request's scope (the request log line's `upstreamRequests`/`upstreamMs`), and logged at
 * DEBUG once its body has ended: method, host, path, status, ms to the response headers, body bytes. Never the
 * query string (a presigned CDN URL carries its signature there) nor a header (credentials live there). A request
 * that got no answer is logged with its cause (failure-cause.ts) and becomes an `UpstreamError('unavailable')`
 * naming it.
 *
 * Body bytes are counted where they enter the body stream (its `push`), which costs no extra stream stage and
 * does not change how the consumer reads it.
 */
import type { Readable } from 'node:stream';
import type { Log } from '../observe/log.js';
import type { Metrics, UpstreamKind } from '../observe/metrics.js';
import { currentScope } from '../observe/request-scope.js';
import { UpstreamError } from './errors.js';
import { describeFailure } from './failure-cause.js';
import type { UpstreamRequest, UpstreamResponse, UpstreamSend } from './transport.js';

/** Where a rule's upstream requests are reported. */
export interface UpstreamObserver {
  /** The rule's prefix (the `rule` label). */
  rule: string;
  metrics: Metrics;
  log?: Log;
}

const API_KIND = /\/v2\/.+\/(manifests|blobs|referrers|tags)\/[^/]+$/;
const KINDS: Record<string, UpstreamKind> = { manifests: 'manifest', blobs: 'blob', referrers: 'referrers', tags: 'tags' };

/** The kind of a registry API URL (`/v2/<name>/manifests/<ref>` → manifest …); undefined for other URLs. */
export function upstreamKindOf(url: URL): UpstreamKind | undefined {
  const m = API_KIND.exec(url.pathname);
  return m ? KINDS[m[1]] : undefined;
}

const round = (ms: number) => Math.round(ms * 10) / 10;

/**
 * Wraps `send`. `kind` (default: from the URL, else `other`) labels the request: a redirect hop to a CDN keeps the
 * kind of the request it continues, a token realm request is `token`.
 */
export function observedSend(send: UpstreamSend, o: UpstreamObserver): (req: UpstreamRequest, kind?: UpstreamKind) => Promise<UpstreamResponse> {
  const { rule, metrics, log } = o;
  return async (req, kind) => {
    const k = kind ?? upstreamKindOf(req.url) ?? 'other';
    const where = { rule, kind: k, method: req.method, host: req.url.host, path: req.url.pathname };
    const scope = currentScope();
    const started = performance.now();
    let res: UpstreamResponse;
    try {
      res = await send(req);
    } catch (err) {
      const ms = round(performance.now() - started);
      metrics.upstreamRequest({ rule, kind: k, method: req.method, status: 'error' });
      if (scope) {
        scope.upstreamRequests++;
        scope.upstreamMs += ms;
      }
      if (err instanceof UpstreamError) throw err;
      const failure = describeFailure(err, req.signal.aborted);
      log?.debug('upstream request failed', { ...where, ms, cause: failure.cause, code: failure.code, error: failure.detail });
      const code = failure.code ? ` (${failure.code})` : '';
      // A refused address raised inside the dispatcher is an UpstreamError already.
      const inner = (err as { cause?: unknown }).cause;
      if (inner instanceof UpstreamError) throw inner;
      throw new UpstreamError('unavailable', `${req.method} ${req.url.host}${req.url.pathname}: ${failure.cause}${code}: ${failure.detail}`);
    }
    const ms = round(performance.now() - started);
    metrics.upstreamRequest({ rule, kind: k, method: req.method, status: res.status });
    if (scope) {
      scope.upstreamRequests++;
      scope.upstreamMs += ms;
    }
    countBody(res.body, scope, (bytes) => {
      if (bytes > 0) metrics.upstreamBytes(rule, bytes);
      log?.debug('upstream request', { ...where, status: res.status, ms, bytes });
    });
    return res;
  };
}

/** Counts the bytes pushed into `body`; `done(bytes)` once it has closed (ended, discarded or destroyed). */
function countBody(body: Readable, scope: ReturnType<typeof currentScope>, done: (bytes: number) => void): void {
  // What arrived before the response reached us is in the stream's buffer still (nobody has read it yet).
  let bytes = body.readableLength;
  if (scope) scope.upstreamBytes += bytes;
  const push = body.push;
  body.push = function counted(this: Readable, chunk: unknown, encoding?: BufferEncoding) {
    if (chunk !== null && chunk !== undefined) {
      const n = (chunk as { length?: number }).length ?? 0;
      bytes += n;
      if (scope) scope.upstreamBytes += n;
    }
    return push.call(this, chunk, encoding);
  };
  body.once('close', () => done(bytes));
}
