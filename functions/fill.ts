/**
 * The fill Lambda: invoked asynchronously by the registry function on a blob miss (AWS), with up to 15 min
 * to stream the upstream blob into S3, verify it, write the DynamoDB blob record (the commit point), link it to
 * the repository, and release the fill lease. The waiting registry request sees the record and answers 307.
 */
import middy from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import type { FillJob } from '../shared/registry/deps.js';
import { getRuntime } from '../shared/runtime.js';
import { flushMetrics } from './flush-metrics.js';

const runtime = await getRuntime();

/** Entry point. Errors are logged and rethrown (Lambda's async retry then applies; the lease bounds overlap). */
export const handler = middy<FillJob, { size?: number }>()
  .use(injectLambdaContext(runtime.logger, { resetKeys: true }))
  .use(flushMetrics(runtime.emf, runtime.stats))
  .handler(async (job) => {
    const size = await runtime.blobs.fill(job.name, job.digest, job.leaseOwner);
    // undefined: the fill did not start, its lease having been taken over meanwhile (logged by the fill).
    if (size !== undefined) runtime.logger.info('fill done', { name: job.name, digest: job.digest, size });
    return { size };
  });
