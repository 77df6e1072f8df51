/**
 * The middy middleware that writes the core's CloudWatch EMF metrics (shared/observe/emf.ts) at the end of each
 * invocation, whether the handler succeeded or threw: what an invocation counted leaves with it, before Lambda
 * freezes the container.
 */
import type middy from '@middy/core';
import type { EmfMetrics } from '../shared/observe/emf.js';

/** Flushes `emf` (absent off Lambda: then nothing) after every invocation. */
export function flushMetrics(emf: EmfMetrics | undefined): middy.MiddlewareObj {
  const flush = () => emf?.flush();
  return { after: flush, onError: flush };
}
