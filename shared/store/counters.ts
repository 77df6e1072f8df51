/**
 * Per-rule request counters kept in the index, so `npx pullthrough stats` works without CloudWatch or Prometheus:
 * the port ({@link RuleCounters}) and its count record. Counts are added in batches (shared/observe/stats.ts
 * flushes what a process counted once a minute), never one write per request. Kept per rule: one bucket per hour
 * (enough for "the last day", pruned after two days) and a since-start total with the time of its first count.
 * Adapters: sqlite-counters.ts (the embedded index file), dynamodb-counters.ts (the table).
 */

/** What the cache did for one rule. Counts; bytes. */
export interface RuleCounts {
  /** Client requests of registry routes (manifest, blob, tags, referrers, catalog). */
  requests: number;
  /** Manifest and blob requests served from the cache (`isCacheHit` in shared/observe/metrics.ts). */
  hits: number;
  /** Manifest and blob requests whose content was fetched from the upstream. */
  misses: number;
  /** Requests answered with a status ≥ 400. */
  errors: number;
  upstreamRequests: number;
  upstreamBytes: number;
  servedBytes: number;
}

/** The fields of {@link RuleCounts}, in a fixed order (column and attribute names). */
export const COUNT_FIELDS = ['requests', 'hits', 'misses', 'errors', 'upstreamRequests', 'upstreamBytes', 'servedBytes'] as const satisfies ReadonlyArray<keyof RuleCounts>;

/** All zeros. */
export const noCounts = (): RuleCounts => ({ requests: 0, hits: 0, misses: 0, errors: 0, upstreamRequests: 0, upstreamBytes: 0, servedBytes: 0 });

/** Adds `b` into `a` (in place); returns `a`. */
export function addCounts(a: RuleCounts, b: RuleCounts): RuleCounts {
  for (const f of COUNT_FIELDS) a[f] += b[f];
  return a;
}

/** Milliseconds in one bucket. */
export const HOUR_MS = 3_600_000;
/** Buckets older than this are pruned (ms): the last day needs 25 of them at most. */
export const KEEP_BUCKETS_MS = 48 * HOUR_MS;

/** The start (ms) of the hour bucket holding `at` (ms). */
export const hourOf = (at: number) => Math.floor(at / HOUR_MS) * HOUR_MS;

/** One rule's counts as `stats` reads them. */
export interface RuleCountsReport {
  rule: string;
  /** Sum of the hour buckets from `sinceHour` on. */
  recent: RuleCounts;
  /** Everything counted since the first count. */
  total: RuleCounts;
  /** When the first count was added (ms); undefined when nothing was ever counted. */
  since?: number;
}

/** The counters port. */
export interface RuleCounters {
  /**
   * Adds `counts` to `rule`'s bucket of the hour starting at `hour` (ms) and to its total, atomically per item
   * (concurrent writers from several processes add up); `now` (ms) becomes the total's first time if it has none.
   */
  add(rule: string, hour: number, counts: RuleCounts, now: number): Promise<void>;
  /** The counts of each of `rules` (zeros for a rule never counted), `recent` from the bucket starting at `sinceHour`. */
  read(rules: string[], sinceHour: number): Promise<RuleCountsReport[]>;
}
