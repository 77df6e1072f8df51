/**
 * A loopback stand-in for AWS Secrets Manager's `GetSecretValue` (JSON 1.1 protocol: `POST /` with
 * `X-Amz-Target: secretsmanager.GetSecretValue`), reached by the real SDK client through the SDK's own
 * `AWS_ENDPOINT_URL_SECRETS_MANAGER`. It checks the request is SigV4-signed for `secretsmanager` (presence and
 * scope, not the signature), answers secrets by name or ARN, and counts reads so a test can say "one read
 * across every pull".
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SecretsStandin {
  /** `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_SECRETS_MANAGER`. */
  url: string;
  /** Secret values by name; change one to simulate a rotation. */
  secrets: Map<string, string>;
  /** `GetSecretValue` calls, by the `SecretId` asked for. */
  reads: string[];
  /** Answer every call with this status (e.g. 500) while set. */
  failWith?: number;
  close(): Promise<void>;
}

/** The ARN the stand-in gives secret `name`. */
export const secretArn = (name: string) => `arn:aws:secretsmanager:us-east-1:111122223333:secret:${name}-AbCdEf`;

/** Environment for an SDK client that should talk to `standin` (fixed test credentials and region). */
export function secretsClientEnv(standin: SecretsStandin): Record<string, string> {
  return {
    AWS_ENDPOINT_URL_SECRETS_MANAGER: standin.url,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'AKIASECRETSSTANDIN01',
    AWS_SECRET_ACCESS_KEY: 'secrets-standin-test-secret-key',
  };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Starts the stand-in on 127.0.0.1 (free port) with `secrets` (name → SecretString). */
export async function startSecretsStandin(secrets: Record<string, string> = {}): Promise<SecretsStandin> {
  const state: SecretsStandin = {
    url: '',
    secrets: new Map(Object.entries(secrets)),
    reads: [],
    close: async () => undefined,
  };
  const server = createServer((req, res) => {
    void readBody(req).then((text) => {
      const fail = (status: number, type: string, message: string) => {
        res.writeHead(status, { 'Content-Type': 'application/x-amz-json-1.1', 'x-amzn-ErrorType': type });
        res.end(JSON.stringify({ __type: type, message }));
      };
      if (req.method !== 'POST' || req.headers['x-amz-target'] !== 'secretsmanager.GetSecretValue') return fail(400, 'UnknownOperationException', 'only GetSecretValue');
      if (!/^AWS4-HMAC-SHA256 Credential=[A-Z0-9]+\/\d{8}\/[a-z0-9-]+\/secretsmanager\/aws4_request, /.test(req.headers.authorization ?? '')) {
        return fail(400, 'IncompleteSignatureException', 'request is not SigV4-signed for secretsmanager');
      }
      let id: string | undefined;
      try {
        id = (JSON.parse(text) as { SecretId?: string }).SecretId;
      } catch {
        /* below */
      }
      if (!id) return fail(400, 'InvalidParameterException', 'SecretId is required');
      state.reads.push(id);
      if (state.failWith) return fail(state.failWith, 'InternalServiceError', 'stand-in told to fail');
      const name = [...state.secrets.keys()].find((n) => n === id || secretArn(n) === id);
      if (name === undefined) return fail(400, 'ResourceNotFoundException', "Secrets Manager can't find the specified secret.");
      res.writeHead(200, { 'Content-Type': 'application/x-amz-json-1.1' });
      res.end(
        JSON.stringify({
          ARN: secretArn(name),
          Name: name,
          SecretString: state.secrets.get(name),
          VersionId: '00000000-0000-4000-8000-000000000000',
          VersionStages: ['AWSCURRENT'],
          CreatedDate: Math.floor(Date.now() / 1000),
        }),
      );
    }, () => res.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  state.close = async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return state;
}
