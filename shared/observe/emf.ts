/**
 * The Lambda output of the metrics port: CloudWatch Embedded Metric Format lines written with Powertools Metrics
 * (namespace `pullthrough`). Events are summed in memory during an invocation and written by {@link EmfMetrics.flush}
 * at its end (the handlers' `flushMetrics` middleware): one EMF line per distinct set of dimension values, so a
 * pull of nine requests costs a handful of lines, not one per event. No PutMetricData call, no extra latency.
 *
 * | metric (unit) | dimensions | values |
 * |---|---|---|
 * | `Requests` (Count), `ServedBytes` (Bytes) | `Rule`, `Kind` (manifest, blob, tags, referrers, catalog), `Result` (hit, miss, stale, revalidated, refreshed, none, error) | client requests; bytes served from the cache |
 * | `CacheHit` (None: 1 or 0 per request, so its Average is the hit ratio, see `isCacheHit`) | `Rule` | manifest and blob requests |
 * | `UpstreamRequests` (Count) | `Rule`, `Kind` (manifest, blob, tags, referrers, token, other), `Result` (2xx, 3xx, 4xx, 429, 5xx, error) | requests sent upstream |
 * | `UpstreamBytes` (Bytes) | `Rule` | body bytes received from upstreams |
 * | `Fills` (Count), `FillDuration` (Seconds, committed fills) | `Rule`, `Kind` = blob, `Result` (ok, failed) | blob fills |
 * | `TagChecks` (Count) | `Rule`, `Kind` = tag, `Result` (unchanged, moved, gone, error) | re-checks of cached tags |
 * | `Verifications` (Count) | `Rule`, `Kind` = manifest, `Result` (verified, unsigned, refused, exempt) | signature-policy verdicts made |
 * | `StoredBytes` (Bytes) | `Rule` | bytes stored, as measured |
 * | `Requests`, `UpstreamRequests`, `UpstreamErrors` (5xx and no answer), `FillFailures` (Count) | `service` = pullthrough | totals over every rule, for the stack's alarms (which cannot enumerate rules) |
 *
 * `Rule` is `-` where none applies. Custom metrics are billed per distinct name and dimension values: README,
 * "What it costs".
 */
import { Metrics as Powertools, MetricUnit } from '@aws-lambda-powertools/metrics';
import { isCacheHit, type Metrics } from './metrics.js';

/** The EMF output: the port, and the flush each handler calls at the end of an invocation. */
export interface EmfMetrics extends Metrics {
  /** Writes what was counted since the last flush (nothing when nothing was) and starts afresh. */
  flush(): void;
}

type Unit = (typeof MetricUnit)[keyof typeof MetricUnit];
/** One EMF line to be: its dimension values and its metrics (name → unit and values). */
interface Doc {
  dimensions: Record<string, string>;
  metrics: Map<string, { unit: Unit; values: number[] }>;
}

/** Every metric name this output writes (the stack's dashboard and alarms may use only these). */
export const EMF_METRIC_NAMES = [
  'Requests', 'ServedBytes', 'CacheHit', 'UpstreamRequests', 'UpstreamBytes', 'UpstreamErrors', 'Fills', 'FillDuration', 'FillFailures', 'TagChecks', 'Verifications', 'StoredBytes',
] as const;

/** At most this many values of one metric per line (EMF's limit is 100). */
const MAX_VALUES = 100;

/** The HTTP status as a `Result` dimension: its class, with 429 (rate limited) apart. */
export function statusClass(status: number | 'error'): string {
  if (status === 'error') return 'error';
  if (status === 429) return '429';
  return `${Math.floor(status / 100)}xx`;
}

/** Creates the EMF output. `namespace` defaults to `pullthrough`. */
export function createEmfMetrics(opts: { namespace?: string } = {}): EmfMetrics {
  const namespace = opts.namespace ?? 'pullthrough';
  const emf = new Powertools({ namespace, serviceName: 'pullthrough' });
  const docs = new Map<string, Doc>();

  /** Adds `value` to metric `name` of the line with these dimension values (sums counts; keeps durations). */
  function add(dimensions: Record<string, string>, name: string, unit: Unit, value: number, sum = true): void {
    const key = JSON.stringify(dimensions);
    let doc = docs.get(key);
    if (!doc) docs.set(key, (doc = { dimensions, metrics: new Map() }));
    const m = doc.metrics.get(name);
    if (!m) doc.metrics.set(name, { unit, values: [value] });
    else if (sum) m.values[0] += value;
    else if (m.values.length < MAX_VALUES) m.values.push(value);
  }
  const rkr = (rule: string, kind: string, result: string) => ({ Rule: rule, Kind: kind, Result: result });
  const total = { service: 'pullthrough' };

  return {
    request(e) {
      const dims = rkr(e.rule, e.kind, e.result);
      add(dims, 'Requests', MetricUnit.Count, 1);
      if (e.servedBytes > 0) add(dims, 'ServedBytes', MetricUnit.Bytes, e.servedBytes);
      add(total, 'Requests', MetricUnit.Count, 1);
      const hit = e.kind === 'manifest' || e.kind === 'blob' ? isCacheHit(e.result) : undefined;
      if (hit !== undefined) add({ Rule: e.rule }, 'CacheHit', MetricUnit.NoUnit, hit ? 1 : 0, false);
    },
    upstreamRequest(e) {
      const result = statusClass(e.status);
      add(rkr(e.rule, e.kind, result), 'UpstreamRequests', MetricUnit.Count, 1);
      add(total, 'UpstreamRequests', MetricUnit.Count, 1);
      if (result === 'error' || result === '5xx') add(total, 'UpstreamErrors', MetricUnit.Count, 1);
    },
    upstreamBytes(rule, bytes) {
      add({ Rule: rule }, 'UpstreamBytes', MetricUnit.Bytes, bytes);
    },
    fill(e) {
      const dims = rkr(e.rule, 'blob', e.ok ? 'ok' : 'failed');
      add(dims, 'Fills', MetricUnit.Count, 1);
      if (e.ok) add(dims, 'FillDuration', MetricUnit.Seconds, e.seconds, false);
      else add(total, 'FillFailures', MetricUnit.Count, 1);
    },
    tagCheck(e) {
      add(rkr(e.rule, 'tag', e.result), 'TagChecks', MetricUnit.Count, 1);
    },
    verification(e) {
      add(rkr(e.rule, 'manifest', e.result), 'Verifications', MetricUnit.Count, 1);
    },
    storedBytes(rule, bytes) {
      const doc = docs.get(JSON.stringify({ Rule: rule }));
      doc?.metrics.delete('StoredBytes'); // a gauge: the last value counts
      add({ Rule: rule }, 'StoredBytes', MetricUnit.Bytes, bytes);
    },
    flush() {
      for (const doc of docs.values()) {
        // The rule lines carry exactly Rule/Kind/Result (or Rule); the totals the `service` dimension.
        if ('service' in doc.dimensions) emf.setDefaultDimensions(doc.dimensions);
        else {
          emf.clearDefaultDimensions();
          for (const [k, v] of Object.entries(doc.dimensions)) emf.addDimension(k, v);
        }
        for (const [name, m] of doc.metrics) for (const v of m.values) emf.addMetric(name, m.unit, v);
        emf.publishStoredMetrics();
      }
      docs.clear();
    },
  };
}
