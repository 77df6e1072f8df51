/**
 * The request scope: what one client request caused, gathered while it runs and read by its log line. It is held
 * in an `AsyncLocalStorage`, so code deep in the core (the manifest and blob services, the upstream exchange)
 * records into the scope of the request it runs for without every signature carrying it. Work a request starts
 * and leaves running (a blob fill in the background, a re-check that outlives its wait) stays attributed to that
 * request: it caused it. Outside any request (the scheduled refresh, a CLI command) the notes go nowhere.
 *
 * Cost: one `AsyncLocalStorage.run` per request and a lookup per note (see `npm run bench` for the warm-pull
 * overhead, README "Benchmarks").
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { CacheResult, VerifyResult } from './metrics.js';

/** What one request caused. Times in ms, sizes in bytes. */
export interface RequestScope {
  /** Prefix of the rule that served the request's name, once resolved. */
  rule?: string;
  /** What the cache did; unset means `none`. */
  cache?: CacheResult;
  /** The signature policy's verdict on the manifest answered (stored or just made); unset: no policy applies. */
  verify?: VerifyResult;
  /** Bytes of manifests and blobs the answer serves from the cache (see metrics.ts). */
  servedBytes: number;
  /** Upstream requests sent (counted when answered or failed). */
  upstreamRequests: number;
  /** Sum of the upstream requests' times to their response headers (or to their failure). */
  upstreamMs: number;
  /** Upstream response body bytes received so far (grows while a body still streams). */
  upstreamBytes: number;
}

const storage = new AsyncLocalStorage<RequestScope>();

/** A new, empty scope. */
export function newScope(): RequestScope {
  return { servedBytes: 0, upstreamRequests: 0, upstreamMs: 0, upstreamBytes: 0 };
}

/** Runs `fn` with `scope` as the current scope (for everything it awaits or starts). */
export function inScope<T>(scope: RequestScope, fn: () => T): T {
  return storage.run(scope, fn);
}

/** The current request's scope, if code runs for one. */
export function currentScope(): RequestScope | undefined {
  return storage.getStore();
}

/** Records what the cache did for the current request (the last note wins). */
export function noteCache(result: CacheResult): void {
  const scope = storage.getStore();
  if (scope) scope.cache = result;
}

/** Records the signature policy's verdict on the manifest the current request answers (the last note wins). */
export function noteVerify(result: VerifyResult): void {
  const scope = storage.getStore();
  if (scope) scope.verify = result;
}

/** Records the rule that serves the current request's name. */
export function noteRule(rule: string): void {
  const scope = storage.getStore();
  if (scope) scope.rule = rule;
}
