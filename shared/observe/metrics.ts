/**
 * The metrics vocabulary (one port, two outputs): the core says what happened through {@link Metrics}; the
 * adapters turn it into Prometheus text locally (prometheus.ts, prom-client) and CloudWatch EMF on Lambda
 * (emf.ts, Powertools Metrics), and into the per-rule counters `stats` reads (shared/observe/stats-*.ts).
 * Every layer may import this module (STYLE.md); it imports nothing of theirs.
 *
 * What the values mean:
 * - a **request** is one client request of a registry route (`kind`); `result` is the request log's `cache` field
 *   ({@link CacheResult}) or `error` for an answer of status ≥ 400;
 * - **served bytes** are bytes of manifests and blobs answered from the cache: a manifest GET's body, a blob GET's
 *   size when it is redirected to the stored blob (that traffic did not cross the upstream link), never a HEAD;
 * - an **upstream request** is one HTTP request sent to an upstream host (token requests and redirect hops
 *   included; exchange.ts counts them where they are sent), `status` its HTTP status or `error` when no answer came;
 * - **upstream bytes** are response body bytes received from upstream hosts.
 */

/** The registry routes counted as requests. */
export type RequestKind = 'manifest' | 'blob' | 'tags' | 'referrers' | 'catalog';

/**
 * What the cache did for a request (the log's `cache` field):
 * - `hit`: answered from the cache, no upstream request;
 * - `miss`: not cached (or not answerable from the cache: tag lists, referrers): fetched from the upstream;
 * - `stale`: served from the cache because the upstream failed (or did not answer in time);
 * - `revalidated`: a cached tag re-checked upstream, unchanged; `refreshed`: re-checked, moved, new one served;
 * - `none`: no cache involved (`/v2/` ping, `/token`, an error before any lookup).
 */
export type CacheResult = 'hit' | 'miss' | 'stale' | 'revalidated' | 'refreshed' | 'none';

/** A request's result in the metrics: the cache result, or `error` (status ≥ 400). */
export type RequestResult = CacheResult | 'error';

/**
 * The hit ratio's terms: a request whose content came from the cache (`hit`, `revalidated` — only a HEAD went
 * upstream —, `stale`) is a hit; `miss` and `refreshed` (the content was fetched) are misses; `error` and `none`
 * count as neither. Returns undefined for those.
 */
export function isCacheHit(result: RequestResult): boolean | undefined {
  if (result === 'hit' || result === 'revalidated' || result === 'stale') return true;
  if (result === 'miss' || result === 'refreshed') return false;
  return undefined;
}

/** What an upstream request asked for (from its URL; `token` for a token realm). */
export type UpstreamKind = 'manifest' | 'blob' | 'tags' | 'referrers' | 'token' | 'other';

/** The outcome of one re-check of a cached tag (pull-time or scheduled). */
export type TagCheckResult = 'unchanged' | 'moved' | 'gone' | 'error';

/**
 * A signature-policy verdict (shared/registry/signature-check.ts): `verified`, `unsigned` (not verified, served: mode
 * warn), `refused` (mode enforce: 403), `exempt` (signature material, let through).
 */
export type VerifyResult = 'verified' | 'unsigned' | 'refused' | 'exempt';

/** The `rule` label of a request no rule served (catalog, an unknown or invalid name). */
export const NO_RULE = '-';

/** The port the core counts through. Implementations must be cheap and never throw. */
export interface Metrics {
  /** One client request of a registry route answered. `servedBytes`: see the file header (0 when none). */
  request(e: { rule: string; kind: RequestKind; result: RequestResult; servedBytes: number }): void;
  /** One upstream request answered (`status`) or failed without an answer (`error`). */
  upstreamRequest(e: { rule: string; kind: UpstreamKind; method: string; status: number | 'error' }): void;
  /** Body bytes received from an upstream (reported once per response, when its body ends). */
  upstreamBytes(rule: string, bytes: number): void;
  /** A blob fill ended: committed (`ok`) or failed. Seconds from its start. */
  fill(e: { rule: string; seconds: number; ok: boolean }): void;
  /** A cached tag was re-checked against its upstream. */
  tagCheck(e: { rule: string; result: TagCheckResult }): void;
  /** A signature policy made a verdict on a manifest (at fill time, or again after its keys changed; not on warm pulls). */
  verification(e: { rule: string; result: VerifyResult }): void;
  /** The bytes stored for a rule, as last measured (a gauge). */
  storedBytes(rule: string, bytes: number): void;
}

/** Metrics that go nowhere (CLI commands, tests that do not look). */
export const noMetrics: Metrics = {
  request: () => undefined,
  upstreamRequest: () => undefined,
  upstreamBytes: () => undefined,
  fill: () => undefined,
  tagCheck: () => undefined,
  verification: () => undefined,
  storedBytes: () => undefined,
};

/** Sends every event to each of `sinks` (e.g. Prometheus and the stats counters). */
export function fanOut(...sinks: Metrics[]): Metrics {
  if (sinks.length === 1) return sinks[0];
  const each = <K extends keyof Metrics>(k: K) => ((...args: unknown[]) => {
    for (const s of sinks) (s[k] as (...a: unknown[]) => void)(...args);
  }) as Metrics[K];
  return {
    request: each('request'),
    upstreamRequest: each('upstreamRequest'),
    upstreamBytes: each('upstreamBytes'),
    fill: each('fill'),
    tagCheck: each('tagCheck'),
    verification: each('verification'),
    storedBytes: each('storedBytes'),
  };
}
