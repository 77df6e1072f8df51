/**
 * Reads the token signing key set from AWS (an AWS adapter: the composition root loads this file only when
 * `PULLTHROUGH_TOKEN_KEY` is set). `ssm:<parameter name>` reads a (SecureString) parameter with decryption;
 * `secretsmanager:<secret id>` reads the secret's current `SecretString`. The value is one JWK or a JSON array
 * of JWKs (see keys.ts). Errors name the source, never the value.
 */
import { GetParameterCommand, SSMClient } from '@aws-sdk/client-ssm';
import { createSecretsManagerReader } from '../aws-secrets.js';
import type { TokenKeySource } from '../config.js';
import { createKeyProvider, KEY_CACHE_TTL_MS, type TokenKeyProvider } from './keys.js';

/** A provider reading the key set from SSM or Secrets Manager, cached {@link KEY_CACHE_TTL_MS}. */
export function createAwsKeyProvider(source: TokenKeySource): TokenKeyProvider {
  const label = `${source.kind}:${source.id}`;
  let read: () => Promise<string | undefined>;
  if (source.kind === 'ssm') {
    const ssm = new SSMClient({});
    read = async () => (await ssm.send(new GetParameterCommand({ Name: source.id, WithDecryption: true }))).Parameter?.Value;
  } else {
    const readSecret = createSecretsManagerReader();
    read = () => readSecret(source.id);
  }
  return createKeyProvider(
    async () => {
      let value: string | undefined;
      try {
        value = await read();
      } catch (err) {
        throw new Error(`token key ${label}: cannot be read (${(err as Error).name})`);
      }
      if (!value) throw new Error(`token key ${label}: empty value`);
      return value;
    },
    { source: label, ttlMs: KEY_CACHE_TTL_MS },
  );
}
