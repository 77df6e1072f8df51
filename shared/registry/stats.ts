/**
 * The cache's own statistics, for `npx pullthrough stats` without CloudWatch or Prometheus: a {@link Metrics} sink
 * that sums what a process counts per rule and hour in memory and adds it to the index's counters
 * (shared/store/counters.ts) in batches — at most once a minute per process (`intervalMs`), never one write per
 * request — and the report `stats` prints.
 *
 * When batches are written: the local server and CLI commands on a timer and when they stop; a Lambda function at
 * the end of an invocation when the last write is a minute old (`flushIfDue`), so a busy container writes once a
 * minute and an idle one when it next runs. What a Lambda container counted since its last write is lost if Lambda
 * retires it first: `stats` on AWS may miss up to a minute of a container's traffic (the CloudWatch metrics do not).
 * A failed write keeps the counts for the next one.
 */
import type { Log } from '../observe/log.js';
import { isCacheHit, NO_RULE, type Metrics } from '../observe/metrics.js';
import { addCounts, HOUR_MS, hourOf, noCounts, type RuleCounters, type RuleCounts } from '../store/counters.js';

/** Milliseconds between two batches of one process (the "batched per minute"). */
export const STATS_FLUSH_MS = 60_000;

/** The recorder: the sink, and its writes. */
export interface StatsRecorder extends Metrics {
  /** Writes what was counted (each rule and hour: one add); resolves once written (or kept after a failure). */
  flush(): Promise<void>;
  /** {@link flush} if the last one is `intervalMs` old (Lambda: at the end of each invocation). */
  flushIfDue(): Promise<void>;
  /** Starts flushing every `intervalMs` (a long-running process; the timer does not keep it alive). */
  startTimer(): void;
  /** Stops the timer and writes the rest. */
  close(): Promise<void>;
}

/** Creates the recorder over `counters`; `now` in ms. */
export function createStatsRecorder(opts: { counters: RuleCounters; now: () => number; log: Log; intervalMs?: number }): StatsRecorder {
  const { counters, now, log } = opts;
  const intervalMs = opts.intervalMs ?? STATS_FLUSH_MS;
  let pending = new Map<string, { rule: string; hour: number; counts: RuleCounts }>();
  let lastFlush = now();
  let timer: ReturnType<typeof setInterval> | undefined;
  let writing: Promise<void> = Promise.resolve();

  const countsOf = (rule: string): RuleCounts => {
    const hour = hourOf(now());
    const key = `${rule}\n${hour}`;
    let entry = pending.get(key);
    if (!entry) pending.set(key, (entry = { rule, hour, counts: noCounts() }));
    return entry.counts;
  };

  async function write(): Promise<void> {
    lastFlush = now();
    const batch = pending;
    pending = new Map();
    for (const [key, { rule, hour, counts }] of batch) {
      try {
        await counters.add(rule, hour, counts, now());
      } catch (err) {
        log.warn('could not write the stats counters; kept for the next write', { rule, reason: (err as Error).message });
        const kept = pending.get(key);
        if (kept) addCounts(kept.counts, counts);
        else pending.set(key, { rule, hour, counts });
      }
    }
  }
  // Writes run one after another (a timer tick and a close never interleave their adds).
  const flush = () => (writing = writing.then(write));

  return {
    request(e) {
      const c = countsOf(e.rule);
      c.requests++;
      c.servedBytes += e.servedBytes;
      if (e.result === 'error') c.errors++;
      const hit = e.kind === 'manifest' || e.kind === 'blob' ? isCacheHit(e.result) : undefined;
      if (hit === true) c.hits++;
      else if (hit === false) c.misses++;
    },
    upstreamRequest(e) {
      countsOf(e.rule).upstreamRequests++;
    },
    upstreamBytes(rule, bytes) {
      countsOf(rule).upstreamBytes += bytes;
    },
    fill: () => undefined,
    tagCheck: () => undefined,
    verification: () => undefined,
    storedBytes: () => undefined,
    flush,
    flushIfDue: () => (now() - lastFlush >= intervalMs && pending.size > 0 ? flush() : writing),
    startTimer() {
      timer ??= setInterval(() => void flush(), intervalMs);
      timer.unref();
    },
    async close() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await flush();
    },
  };
}

/** One rule in the `stats` report. Bytes; `hitRatio` in 0..1 (undefined without manifest or blob requests). */
export interface RuleStats {
  rule: string;
  lastDay: RuleCounts & { hitRatio?: number };
  sinceStart: RuleCounts & { hitRatio?: number; since?: number };
  /** Bytes stored for the rule, as last measured (the lifecycle's usage); undefined when never measured. */
  storedBytes?: number;
}

const withRatio = (c: RuleCounts) => ({ ...c, ...(c.hits + c.misses > 0 ? { hitRatio: c.hits / (c.hits + c.misses) } : {}) });

/**
 * The report of `rules` (and `-`, requests no rule served, when it has any): the last 24 hours (by the hour: the
 * current hour and the 23 before it) and since the first count. `storedBytes` per rule, when known.
 */
export async function readStats(counters: RuleCounters, rules: string[], at: number, storedBytes: Record<string, number> = {}): Promise<RuleStats[]> {
  const reports = await counters.read([...rules, NO_RULE], hourOf(at) - 23 * HOUR_MS);
  return reports
    .filter((r) => r.rule !== NO_RULE || r.total.requests > 0)
    .map((r) => ({
      rule: r.rule,
      lastDay: withRatio(r.recent),
      sinceStart: { ...withRatio(r.total), ...(r.since === undefined ? {} : { since: r.since }) },
      ...(storedBytes[r.rule] === undefined ? {} : { storedBytes: storedBytes[r.rule] }),
    }));
}
