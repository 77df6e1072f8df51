/**
 * The composition root's metrics wiring (shared/runtime.ts): which outputs the core's one metrics port feeds in
 * this process — CloudWatch EMF on Lambda, Prometheus where `PULLTHROUGH_METRICS_PORT` asks for it (loaded only
 * then: prom-client costs ~80 ms of start-up every CLI command would pay) — and always the per-rule counters in
 * the index that `stats` reads (shared/registry/stats.ts).
 */
import type { Environment } from './config.js';
import { createEmfMetrics, type EmfMetrics } from './observe/emf.js';
import type { Log } from './observe/log.js';
import { fanOut, type Metrics } from './observe/metrics.js';
import type { PrometheusMetrics } from './observe/prometheus.js';
import type { Lifecycle } from './registry/lifecycle/index.js';
import { createStatsRecorder, type StatsRecorder } from './registry/stats.js';
import type { RuleCounters } from './store/counters.js';

/** The outputs of a process, and the port that feeds them all. */
export interface MetricsOutputs {
  metrics: Metrics;
  emf?: EmfMetrics;
  prometheus?: PrometheusMetrics;
  stats: StatsRecorder;
}

/** Bytes stored per rule as the last complete GC pass measured them (shared/registry/lifecycle/); undefined before one. */
export async function storedBytesByRule(lifecycle: Lifecycle | undefined): Promise<Record<string, number> | undefined> {
  const usage = await lifecycle?.lastUsage();
  return usage && Object.fromEntries(Object.entries(usage.rules).map(([rule, u]) => [rule, u.storedBytes]));
}

/** Builds the outputs; `lifecycle()` gives the lifecycle once built (the stored-bytes gauge reads its usage). */
export async function buildMetricsOutputs(env: Environment, opts: { counters: RuleCounters; log: Log; lifecycle: () => Lifecycle | undefined }): Promise<MetricsOutputs> {
  const emf = env.inLambda ? createEmfMetrics() : undefined;
  const prometheus = env.metricsPort !== undefined && !env.inLambda
    ? (await import('./observe/prometheus.js')).createPrometheusMetrics({ readStoredBytes: () => storedBytesByRule(opts.lifecycle()) })
    : undefined;
  const stats = createStatsRecorder({ counters: opts.counters, now: Date.now, log: opts.log });
  const output = emf ?? prometheus;
  return { metrics: output ? fanOut(output, stats) : stats, emf, prometheus, stats };
}
