/**
 * The local output of the metrics port: Prometheus text (prom-client) for `/metrics` on the local server's
 * metrics listener (`PULLTHROUGH_METRICS_PORT`, bin/metrics-listener.ts). The names (the interface operators build
 * dashboards on; the Grafana dashboard in grafana/ reads them):
 *
 * | metric | type | labels |
 * |---|---|---|
 * | `pullthrough_requests_total` | counter | `rule`, `kind` (manifest, blob, tags, referrers, catalog), `result` (hit, miss, stale, revalidated, refreshed, none, error) |
 * | `pullthrough_upstream_requests_total` | counter | `rule`, `method`, `status` (HTTP status, or `error`: no answer), `kind` (manifest, blob, tags, referrers, token, other) |
 * | `pullthrough_upstream_bytes_total` | counter | `rule`: response body bytes received from upstreams |
 * | `pullthrough_served_bytes_total` | counter | `rule`: bytes of manifests and blobs served from the cache |
 * | `pullthrough_fill_duration_seconds` | histogram | `rule`: committed blob fills, seconds from start to commit |
 * | `pullthrough_fill_failures_total` | counter | `rule`: blob fills that failed |
 * | `pullthrough_tag_checks_total` | counter | `rule`, `result` (unchanged, moved, gone, error): re-checks of cached tags |
 * | `pullthrough_verifications_total` | counter | `rule`, `result` (verified, unsigned, refused, exempt): signature-policy verdicts made |
 * | `pullthrough_stored_bytes` | gauge | `rule`: bytes stored, as the lifecycle last measured them |
 *
 * plus prom-client's default process metrics (`process_*`, `nodejs_*`). `rule` is `-` where no rule applies.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Metrics } from './metrics.js';

/** Seconds: fills range from a small config blob on loopback to a multi-GB layer over the internet. */
const FILL_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900];

/** The Prometheus output: the port's implementation and the text to serve. */
export interface PrometheusMetrics extends Metrics {
  /** The exposition text of every metric (runs the `storedBytes` reader first, when given). */
  text(): Promise<string>;
  /** The `Content-Type` of {@link text}. */
  contentType: string;
}

/**
 * Creates the registry of metrics. `readStoredBytes` (optional) is asked at each scrape for the stored bytes per
 * rule (e.g. the lifecycle's last measurement); without it the gauge shows what `storedBytes` events set.
 */
export function createPrometheusMetrics(opts: { readStoredBytes?: () => Promise<Record<string, number> | undefined>; defaultMetrics?: boolean } = {}): PrometheusMetrics {
  const registry = new Registry();
  const registers = [registry];
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const requests = new Counter({ name: 'pullthrough_requests_total', help: 'Client requests of registry routes, by what the cache did', labelNames: ['rule', 'kind', 'result'], registers });
  const upstream = new Counter({
    name: 'pullthrough_upstream_requests_total', help: 'Requests sent to upstream registries (token requests and redirect hops included)', labelNames: ['rule', 'method', 'status', 'kind'], registers,
  });
  const upstreamBytes = new Counter({ name: 'pullthrough_upstream_bytes_total', help: 'Response body bytes received from upstreams', labelNames: ['rule'], registers });
  const served = new Counter({ name: 'pullthrough_served_bytes_total', help: 'Bytes of manifests and blobs served from the cache', labelNames: ['rule'], registers });
  const fills = new Histogram({ name: 'pullthrough_fill_duration_seconds', help: 'Committed blob fills, seconds from start to commit', labelNames: ['rule'], buckets: FILL_BUCKETS, registers });
  const fillFailures = new Counter({ name: 'pullthrough_fill_failures_total', help: 'Blob fills that failed', labelNames: ['rule'], registers });
  const checks = new Counter({ name: 'pullthrough_tag_checks_total', help: 'Re-checks of cached tags against their upstreams, by outcome', labelNames: ['rule', 'result'], registers });
  const verifications = new Counter({ name: 'pullthrough_verifications_total', help: 'Signature-policy verdicts made on manifests, by result', labelNames: ['rule', 'result'], registers });
  const stored = new Gauge({
    name: 'pullthrough_stored_bytes',
    help: 'Bytes stored per rule, as the lifecycle last measured them',
    labelNames: ['rule'],
    registers,
    async collect() {
      const byRule = await opts.readStoredBytes?.().catch(() => undefined);
      for (const [rule, bytes] of Object.entries(byRule ?? {})) this.set({ rule }, bytes);
    },
  });

  return {
    request(e) {
      requests.inc({ rule: e.rule, kind: e.kind, result: e.result });
      if (e.servedBytes > 0) served.inc({ rule: e.rule }, e.servedBytes);
    },
    upstreamRequest(e) {
      upstream.inc({ rule: e.rule, method: e.method, status: String(e.status), kind: e.kind });
    },
    upstreamBytes(rule, bytes) {
      upstreamBytes.inc({ rule }, bytes);
    },
    fill(e) {
      if (e.ok) fills.observe({ rule: e.rule }, e.seconds);
      else fillFailures.inc({ rule: e.rule });
    },
    tagCheck(e) {
      checks.inc({ rule: e.rule, result: e.result });
    },
    verification(e) {
      verifications.inc({ rule: e.rule, result: e.result });
    },
    storedBytes(rule, bytes) {
      stored.set({ rule }, bytes);
    },
    text: () => registry.metrics(),
    contentType: registry.contentType,
  };
}
