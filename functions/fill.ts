/**
 * The fill Lambda: invoked asynchronously by the registry function on a blob miss (AWS), with up to 15 min
 * to stream the upstream blob into S3, verify it, write the DynamoDB blob record (the commit point), link it to
 * the repository, and release the fill lease. The waiting registry request sees the record and answers 307.
 * A job with `mode: 'prove'` is a proof by the bytes instead (shared/registry/blob-prove.ts): the name's upstream
 * copy of a blob stored for another name is hashed (nothing stored) and linked to the name when it matches; the
 * waiting request sees the link and answers 307 to the stored copy.
 */
import middy from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import type { FillJob } from '../shared/registry/deps.js';
import { getRuntime } from '../shared/runtime.js';
import { RegistryError } from '../shared/oci/errors.js';
import { isUpstreamUnknown } from '../shared/upstream/errors.js';
import { flushMetrics } from './flush-metrics.js';

const runtime = await getRuntime();

/**
 * A `prove` job. Other bytes than the digest are the upstream's answer, not a failure of the function (no Lambda
 * error; logged as `event: "proof-failed"`): `{ linked: false, invalid: true }`, nothing linked, and the waiting
 * request answers 502 DIGEST_INVALID.
 */
async function prove(job: FillJob): Promise<{ linked: boolean; invalid?: true }> {
  try {
    return { linked: (await runtime.blobs.prove(job.name, job.digest, job.leaseOwner)) === 'linked' };
  } catch (err) {
    if (err instanceof RegistryError && err.code === 'DIGEST_INVALID') return { linked: false, invalid: true };
    throw err;
  }
}

/**
 * Entry point. A blob the upstream does not have (404, or 401/403) is an answer, not an error: the fill logged it
 * (`event: "fill-not-found"`) and counted no failure, and the invocation succeeds with `{ missing: true }` (the
 * waiting request then answers 404 BLOB_UNKNOWN). Other errors are logged and rethrown: the invocation fails
 * (`FillFailures` counted them), with no Lambda retry (serverless.yml: the client's next hop starts a new fill).
 * A `prove` job returns `{ linked: true }`, or `{ linked: false }` when its lease had been taken over.
 */
export const handler = middy<FillJob, { size?: number; missing?: true; linked?: boolean; invalid?: true }>()
  .use(injectLambdaContext(runtime.logger, { resetKeys: true }))
  .use(flushMetrics(runtime.emf, runtime.stats))
  .handler(async (job) => {
    let size: number | undefined;
    try {
      if (job.mode === 'prove') return await prove(job);
      size = await runtime.blobs.fill(job.name, job.digest, job.leaseOwner);
    } catch (err) {
      if (isUpstreamUnknown(err)) return { missing: true };
      throw err;
    }
    // undefined: the fill did not start, its lease having been taken over meanwhile (logged by the fill).
    if (size !== undefined) runtime.logger.info('fill done', { name: job.name, digest: job.digest, size });
    return { size };
  });
