/**
 * The one Secrets Manager reader (an AWS adapter): `GetSecretValue` → the current `SecretString`. Used for
 * rules' upstream credentials (`credentialsSecret`, via the composition root) and for the token signing key
 * (`PULLTHROUGH_TOKEN_KEY=secretsmanager:<id>`). A secret given by ARN is read in the ARN's region; one client per
 * region, created on first use; endpoint override: the SDK's `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
 */
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import type { SecretReader } from './upstream/credentials.js';


/** Creates a reader with its own (lazily made) clients. */
export function createSecretsManagerReader(): SecretReader {
  const clients = new Map<string, SecretsManagerClient>();
  return async (secretId) => {
    const region = /^arn:[^:]+:secretsmanager:([^:]+):/.exec(secretId)?.[1] ?? '';
    let client = clients.get(region);
    if (!client) clients.set(region, (client = new SecretsManagerClient(region ? { region } : {})));
    return (await client.send(new GetSecretValueCommand({ SecretId: secretId }))).SecretString;
  };
}
