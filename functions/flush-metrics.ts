/**
 * The middy middleware that writes what an invocation counted, whether the handler succeeded or threw, before
 * Lambda freezes the container: the core's CloudWatch EMF metrics (shared/observe/emf.ts) every time, and the
 * per-rule counters `stats` reads (shared/registry/stats.ts) when their last write is a minute old.
 */
import type middy from '@middy/core';
import type { EmfMetrics } from '../shared/observe/emf.js';
import type { StatsRecorder } from '../shared/registry/stats.js';

/** Flushes `emf` (absent off Lambda: then nothing) and, when due, `stats` after every invocation. */
export function flushMetrics(emf: EmfMetrics | undefined, stats?: StatsRecorder): middy.MiddlewareObj {
  const flush = async () => {
    emf?.flush();
    await stats?.flushIfDue();
  };
  return { after: flush, onError: flush };
}
