/**
 * Limits of where the config runs: what a deployment can serve, checked at start-up with the config
 * (re-exported by config.ts).
 */
import type { Environment } from './config-environment.js';
import type { RegistryConfig } from './config.js';

/**
 * Lambda's limit on a synchronous response, bytes: 6 MB (Lambda quotas, "Invocation payload (request and
 * response)"; it counts 6 × 1024 × 1024). A registry response is the JSON result API Gateway gets from the function.
 */
export const LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024;
/** Room kept in a response for its JSON envelope around the body (status, headers such as the digest and type). */
const RESPONSE_ENVELOPE_BYTES = 16 * 1024;
/**
 * The largest manifest the registry function can answer: the body goes base64-encoded (4 bytes for every 3, so
 * a manifest stays byte-exact) into a response of at most {@link LAMBDA_RESPONSE_BYTES}. 4,706,304 bytes
 * (4.49 MiB), above the 4 MiB the distribution spec asks registries to accept.
 */
export const LAMBDA_MAX_MANIFEST_BYTES = Math.floor((LAMBDA_RESPONSE_BYTES - RESPONSE_ENVELOPE_BYTES) / 4) * 3;

/**
 * Refuses a config this process could not serve: on Lambda, a `maxManifestBytes` above
 * {@link LAMBDA_MAX_MANIFEST_BYTES} (a larger manifest would be fetched and stored, then fail every pull with a
 * 500 from API Gateway). The local server has no such limit.
 * @throws Error naming the setting, the limit and why.
 */
export function assertServable(env: Pick<Environment, 'inLambda'>, config: RegistryConfig): void {
  if (env.inLambda && config.maxManifestBytes > LAMBDA_MAX_MANIFEST_BYTES) {
    throw new Error(
      `invalid pullthrough config:\nmaxManifestBytes ${config.maxManifestBytes} is more than a Lambda function can answer: ` +
        `a manifest goes base64-encoded into a response of at most 6 MB (${LAMBDA_RESPONSE_BYTES} bytes), so at most ${LAMBDA_MAX_MANIFEST_BYTES} here`,
    );
  }
}
