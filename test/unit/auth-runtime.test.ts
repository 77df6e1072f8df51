/**
 * Client auth in the composition root and the Lambda entry point: the environment settings, the refusal of
 * `auth.mode: none` where auth is required, and the token flow through the real handler with API Gateway v2
 * events (the POST form arrives base64-encoded, as API Gateway sends bodies).
 */
import { existsSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../shared/auth/passwords.js';
import { parseConfig, readEnvironment } from '../../shared/config.js';
import { buildHttpApiEvent } from '../../shared/http/lambda-event.js';
import { parseRoute } from '../../shared/http/router.js';
import { buildRuntime } from '../../shared/runtime.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const rules = [{ prefix: 'local', upstream: 'http://127.0.0.1:5055' }];

describe('environment', () => {
  it('reads PULLTHROUGH_REQUIRE_AUTH and PULLTHROUGH_TOKEN_KEY', () => {
    expect(readEnvironment({})).toMatchObject({ requireAuth: false, tokenKey: undefined, inLambda: false });
    expect(readEnvironment({ PULLTHROUGH_REQUIRE_AUTH: 'true', PULLTHROUGH_TOKEN_KEY: 'ssm:/pullthrough/token-key', AWS_LAMBDA_FUNCTION_NAME: 'f' })).toMatchObject({
      requireAuth: true,
      tokenKey: { kind: 'ssm', id: '/pullthrough/token-key' },
      inLambda: true,
    });
    expect(readEnvironment({ PULLTHROUGH_TOKEN_KEY: 'secretsmanager:arn:aws:secretsmanager:eu-west-1:123456789012:secret:k' }).tokenKey).toEqual({
      kind: 'secretsmanager',
      id: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:k',
    });
    expect(() => readEnvironment({ PULLTHROUGH_TOKEN_KEY: 'file:/x' })).toThrow(/ssm:<parameter name> or secretsmanager:<secret id>/);
    expect(() => readEnvironment({ PULLTHROUGH_REQUIRE_AUTH: 'yes' })).toThrow(/PULLTHROUGH_REQUIRE_AUTH must be true or false/);
  });
});

describe('config and routing', () => {
  it('routes /token (and only it) to the token endpoint', () => {
    expect(parseRoute('/token')).toEqual({ kind: 'token' });
    expect(parseRoute('/token/')).toEqual({ kind: 'unknown' });
    expect(parseRoute('/v2/token')).toEqual({ kind: 'unknown' });
  });

  it('a realm needs an explicit service; a service must be one printable token', () => {
    expect(() => parseConfig({ rules, auth: { mode: 'token', realm: 'https://auth.example.com/token' } })).toThrow(/auth.realm needs auth.service/);
    expect(parseConfig({ rules, auth: { mode: 'token', realm: 'https://auth.example.com/token', service: 'registry.example.com' } }).auth.service).toBe('registry.example.com');
    expect(() => parseConfig({ rules, auth: { service: 'a"b c' } })).toThrow(/printable ASCII/);
  });
});

describe('buildRuntime refuses what must not start', () => {
  it('auth.mode none with PULLTHROUGH_REQUIRE_AUTH=true: a clear error, before any storage is opened', async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), 'pt-rt-')), 'data');
    const env = { ...readEnvironment({ PULLTHROUGH_REQUIRE_AUTH: 'true', PULLTHROUGH_LOG_LEVEL: 'SILENT' }), dataDir };
    await expect(buildRuntime(env, parseConfig({ rules }))).rejects.toThrow(/PULLTHROUGH_REQUIRE_AUTH=true.*auth\.mode: none/);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('token mode on Lambda without PULLTHROUGH_TOKEN_KEY', async () => {
    const env = { ...readEnvironment({ AWS_LAMBDA_FUNCTION_NAME: 'registry', PULLTHROUGH_LOG_LEVEL: 'SILENT' }), dataDir: mkdtempSync(join(tmpdir(), 'pt-rt-')) };
    await expect(buildRuntime(env, parseConfig({ rules, auth: { mode: 'token' } }))).rejects.toThrow(/needs PULLTHROUGH_TOKEN_KEY/);
  });
});

describe('the Lambda handler in token mode', () => {
  let up: FakeUpstream;
  let dataDir: string;
  let handler: (e: ReturnType<typeof buildHttpApiEvent>, c: Context) => Promise<{ statusCode?: number; headers?: Record<string, unknown>; body?: string }>;
  const ctx = { awsRequestId: 'test', functionName: 'registry', getRemainingTimeInMillis: () => 29_000 } as unknown as Context;
  const PASSWORD = 'lambda-Pa55word-61b0';

  beforeAll(async () => {
    up = await startFakeUpstream();
    const dir = mkdtempSync(join(tmpdir(), 'pt-lambda-auth-'));
    const hash = await hashPassword(PASSWORD, { N: 2 ** 10, r: 8, p: 1 });
    writeFileSync(
      join(dir, 'config.yaml'),
      `auth:\n  mode: token\n  users:\n    - username: ci\n      passwordHash: "${hash}"\n      prefixes: [local]\nrules:\n  - prefix: local\n    upstream: ${up.url}\n`,
    );
    dataDir = join(dir, 'data');
    process.env.PULLTHROUGH_CONFIG = join(dir, 'config.yaml');
    process.env.PULLTHROUGH_DATA_DIR = dataDir;
    process.env.PULLTHROUGH_LOG_LEVEL = 'SILENT';
    ({ handler } = (await import('../../functions/registry.js')) as unknown as { handler: typeof handler });
  });
  afterAll(async () => up.close());

  it('challenges /v2/, issues a token for the POST form, and serves the pull with it', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const host = 'abc123.execute-api.eu-west-1.amazonaws.com';
    const ping = await handler(buildHttpApiEvent({ method: 'GET', path: '/v2/', headers: { Host: host, 'X-Forwarded-Proto': 'https' } }), ctx);
    expect(ping.statusCode).toBe(401);
    expect(ping.headers?.['WWW-Authenticate']).toBe(`Bearer realm="https://${host}/token",service="${host}"`);

    const form = new URLSearchParams({ grant_type: 'password', username: 'ci', password: PASSWORD, service: host, scope: 'repository:local/app:pull', client_id: 'containerd' });
    const tokenRes = await handler(
      buildHttpApiEvent({ method: 'POST', path: '/token', headers: { Host: host, 'Content-Type': 'application/x-www-form-urlencoded' }, body: Buffer.from(form.toString()), sourceIp: '203.0.113.5' }),
      ctx,
    );
    expect(tokenRes.statusCode).toBe(200);
    const { token } = JSON.parse(Buffer.from(tokenRes.body!, 'base64').toString()) as { token: string };

    const get = await handler(buildHttpApiEvent({ method: 'GET', path: '/v2/local/app/manifests/v1', headers: { Host: host, Authorization: `Bearer ${token}` } }), ctx);
    expect(get.statusCode).toBe(200);
    expect(get.headers?.['Docker-Content-Digest']).toBe(img.digest);
    // The local key file was created on first use, private to its owner.
    expect(statSync(join(dataDir, 'token-key.json')).mode & 0o777).toBe(0o600);
  });
});
