/**
 * The refresh Lambda. Two ways in:
 * - the EventBridge schedule (`rate(1 day)` by default): one pass over every tag due now, then the config's
 *   `prefetch:` list (shared/registry/scheduled.ts), stopping ~30 s before the Lambda's 15 minutes; what is left
 *   stays due and the next run resumes it;
 * - a direct invocation (forced refresh, see README): `{"name": "<prefix>/<repository>" | "<prefix>", "tag"?: "..."}`
 *   re-checks that tag, repository or rule now; `{}` runs one full scheduled pass.
 */
import middy from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import type { Context } from 'aws-lambda';
import type { RefreshReport, RefreshTarget } from '../shared/registry/refresh.js';
import { runScheduledPass } from '../shared/registry/scheduled.js';
import { getRuntime } from '../shared/runtime.js';
import { flushMetrics } from './flush-metrics.js';

const runtime = await getRuntime();

/** Milliseconds kept in hand before the Lambda's own timeout. */
const SAFETY_MS = 30_000;

/** Entry point: returns the run's report (counts of tags checked, moved, gone, errors). */
export const handler = middy<Partial<RefreshTarget> & { 'detail-type'?: string }, RefreshReport, Error, Context>()
  .use(injectLambdaContext(runtime.logger, { resetKeys: true }))
  .use(logMetrics(runtime.metrics))
  .use(flushMetrics(runtime.emf, runtime.stats))
  .handler(async (event, context) => {
    const deadline = Date.now() + Math.max(1000, context.getRemainingTimeInMillis() - SAFETY_MS);
    const scheduled = event['detail-type'] === 'Scheduled Event' || !event.name;
    return scheduled
      ? runScheduledPass(runtime, { deadline })
      : runtime.refresher.refreshTarget({ name: event.name, tag: event.tag }, { deadline });
  });
