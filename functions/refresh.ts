/**
 * The scheduled refresh Lambda (EventBridge, `rate(1 day)` by default). Its re-check logic (due-time index,
 * HEAD per tag, bounded concurrency) is a later piece of work; today it only starts, builds the runtime and
 * reports that no re-check ran, so the schedule, permissions and packaging are exercised end to end.
 */
import middy from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { getRuntime } from '../shared/runtime.js';

const runtime = await getRuntime();

/** Entry point: returns the number of tags checked (0 until the re-check lands). */
export const handler = middy<unknown, { checked: number }>()
  .use(injectLambdaContext(runtime.logger, { resetKeys: true }))
  .handler(async () => {
    runtime.logger.info('scheduled refresh: re-check not implemented yet; tags refresh on pull after their TTL');
    return { checked: 0 };
  });
