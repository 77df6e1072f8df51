/**
 * The client side of auth mode `iam` (`npm run login-password`): presigns an STS `GetCallerIdentity` request with
 * the caller's AWS credentials and encodes it as the password of user `AWS`. Kept apart from iam.ts (the
 * verifier the registry runs) so only the CLI loads the AWS SDK's signer and credential chain.
 */
import { Sha256 } from '@smithy/core/checksum';
import { SignatureV4 } from '@smithy/signature-v4';
import { ACTION, DEFAULT_EXPIRES_SECONDS, MAX_EXPIRES_SECONDS, VERSION, escapeUri, stsOrigin, type AwsCredentials } from './iam.js';

/**
 * Creates a login password: a presigned STS `GetCallerIdentity` URL, base64url-encoded. `credentials` default to
 * the AWS SDK's provider chain (environment, SSO, profiles, web identity, ECS/EC2 roles). `endpoint` replaces
 * the STS origin (tests: the stand-in). Use it with username {@link IAM_USERNAME}.
 */
export async function createLoginPassword(opts: {
  region: string;
  credentials?: AwsCredentials | (() => Promise<AwsCredentials>);
  expiresInSeconds?: number;
  endpoint?: string;
  signingDate?: Date;
}): Promise<string> {
  const expiresIn = opts.expiresInSeconds ?? DEFAULT_EXPIRES_SECONDS;
  if (!Number.isInteger(expiresIn) || expiresIn < 1 || expiresIn > MAX_EXPIRES_SECONDS) {
    throw new Error(`expiry must be 1..${MAX_EXPIRES_SECONDS} seconds`);
  }
  const origin = new URL(opts.endpoint ?? stsOrigin(opts.region));
  const credentials = opts.credentials ?? (await import('@aws-sdk/credential-provider-node')).defaultProvider();
  const signer = new SignatureV4({ service: 'sts', region: opts.region, credentials, sha256: Sha256, uriEscapePath: true });
  const signed = await signer.presign(
    {
      method: 'GET',
      protocol: origin.protocol,
      hostname: origin.hostname,
      port: origin.port ? Number(origin.port) : undefined,
      path: '/',
      query: { Action: ACTION, Version: VERSION },
      headers: { host: origin.host },
    },
    { expiresIn, signingDate: opts.signingDate },
  );
  const query = Object.entries(signed.query ?? {})
    .map(([k, v]) => `${escapeUri(k)}=${escapeUri(String(v))}`)
    .join('&');
  return Buffer.from(`${origin.origin}/?${query}`).toString('base64url');
}

