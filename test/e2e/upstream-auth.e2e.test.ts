/**
 * Upstream credentials end to end: Debian's docker-registry (distribution 2.8) behind Basic auth (htpasswd) and
 * behind token auth (our token server, whose ES256 JWTs the registry verifies), the real local server, skopeo.
 * A pull through the cache works only with the right credentials in the rule: static, from an environment
 * variable, or from a Secrets Manager secret (the stand-in, read once). Wrong or missing credentials answer
 * 404 (the upstream's 401 is "not found" to the client), never a 5xx, and no credential reaches the server log.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLoginPassword } from '../../shared/auth/login-password.js';
import { pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256, type PulledImage } from '../support/pull.js';
import { scratchDir } from '../support/scratch.js';
import { secretsClientEnv, startSecretsStandin, type SecretsStandin } from '../support/secrets-standin.js';
import { startStsStandin, TEST_STRANGER, TEST_USER, type StsStandin } from '../support/sts-standin.js';
import { assertSkopeoOk, imageRef, skopeoCopy } from '../support/skopeo.js';
import { startTokenServer, type TokenServer } from '../support/token-server.js';
import {
  startUpstreamRegistry,
  TEST_HTPASSWD,
  TEST_REGISTRY_PASSWORD,
  TEST_REGISTRY_USER,
  type UpstreamRegistry,
} from '../support/upstream-registry.js';

const ROBOT = 'robot';
const ROBOT_TOKEN = 'upstream-robot-token-7f3a9c';

let basicUpstream: UpstreamRegistry;
let tokenUpstream: UpstreamRegistry;
let tokens: TokenServer;
let secrets: SecretsStandin;
let cache: LocalServer;
let sts: StsStandin;
let iamCache: LocalServer;
let basicImage: PushedImage;
let tokenImage: PushedImage;

const pull = (ref: string) => pullImage(ref);

function expectSameImage(got: PulledImage, image: PushedImage) {
  expect(sha256(got.manifest)).toBe(image.digest);
  expect(got.blobs.map((b) => b.name).sort()).toEqual(image.blobs.map((b) => b.digest).sort());
  for (const b of got.blobs) expect(b.actual).toBe(b.name);
}

beforeAll(async () => {
  const layerSources = ['/usr/share/common-licenses'];
  basicUpstream = await startUpstreamRegistry({ htpasswd: TEST_HTPASSWD });
  basicImage = await pushSinglePlatformImage(basicUpstream.url, 'team/app', 'v1', {
    format: 'docker',
    arch: 'amd64',
    layerSources,
    creds: `${TEST_REGISTRY_USER}:${TEST_REGISTRY_PASSWORD}`,
  });

  // Token auth: push to the registry without auth, then restart it on the same data with auth.token.
  tokens = await startTokenServer({ users: { [ROBOT]: ROBOT_TOKEN } });
  const open = await startUpstreamRegistry();
  tokenImage = await pushSinglePlatformImage(open.url, 'team/tok', 'v1', { format: 'oci', arch: 'arm64', layerSources });
  await open.stop();
  tokenUpstream = await startUpstreamRegistry({ port: open.port, dataDir: open.dataDir, tokenAuth: tokens });

  // The token server listens on loopback, which only a realm the rule lists in internalHosts may be.
  const internalHosts = [new URL(tokens.realm).host];
  secrets = await startSecretsStandin({ 'pullthrough/token-upstream': JSON.stringify({ username: ROBOT, accessToken: ROBOT_TOKEN }) });
  cache = await startLocalServer(
    {
      rules: [
        { prefix: 'basic', upstream: basicUpstream.url, username: TEST_REGISTRY_USER, accessToken: TEST_REGISTRY_PASSWORD },
        { prefix: 'basic-env', upstream: basicUpstream.url, username: TEST_REGISTRY_USER, accessTokenEnv: 'PT_E2E_UPSTREAM_TOKEN' },
        { prefix: 'basic-wrong', upstream: basicUpstream.url, username: TEST_REGISTRY_USER, accessToken: 'not-the-password' },
        { prefix: 'basic-none', upstream: basicUpstream.url },
        { prefix: 'token-secret', upstream: tokenUpstream.url, internalHosts, credentialsSecret: 'pullthrough/token-upstream' },
        { prefix: 'token-wrong', upstream: tokenUpstream.url, internalHosts, username: ROBOT, accessToken: 'not-the-token' },
        { prefix: 'token-none', upstream: tokenUpstream.url, internalHosts },
        { prefix: 'token-missing-secret', upstream: tokenUpstream.url, internalHosts, credentialsSecret: 'pullthrough/does-not-exist' },
      ],
    },
    { env: { PT_E2E_UPSTREAM_TOKEN: TEST_REGISTRY_PASSWORD, PULLTHROUGH_LOG_LEVEL: 'DEBUG', ...secretsClientEnv(secrets) } },
  );

  // Client auth mode iam in front of the same upstream: the caller's AWS identity decides what it may pull.
  sts = await startStsStandin();
  iamCache = await startLocalServer(
    {
      auth: { mode: 'iam', iam: { region: 'us-east-1', principals: [{ arn: 'arn:aws:iam::111122223333:user/ci/*', prefixes: ['basic'] }] } },
      rules: [
        { prefix: 'basic', upstream: basicUpstream.url, username: TEST_REGISTRY_USER, accessToken: TEST_REGISTRY_PASSWORD },
        { prefix: 'other', upstream: basicUpstream.url, username: TEST_REGISTRY_USER, accessToken: TEST_REGISTRY_PASSWORD },
      ],
    },
    { env: { PULLTHROUGH_STS_ENDPOINT: sts.url } },
  );
});

afterAll(async () => {
  await iamCache?.stop();
  await sts?.close();
  await cache?.stop();
  await secrets?.close();
  await tokenUpstream?.stop();
  await basicUpstream?.stop();
  await tokens?.close();
});

/** Status of a manifest GET and a blob GET through the cache for `prefix`. */
async function statuses(prefix: string, repo: string, image: PushedImage) {
  const manifest = await fetch(`${cache.url}/v2/${prefix}/${repo}/manifests/v1`);
  const blob = await fetch(`${cache.url}/v2/${prefix}/${repo}/blobs/${image.blobs[0].digest}`, { redirect: 'manual' });
  return { manifest: manifest.status, code: ((await manifest.json()) as { errors?: Array<{ code: string }> }).errors?.[0]?.code, blob: blob.status };
}

describe('Basic auth upstream (htpasswd)', () => {
  it('the upstream refuses anonymous pulls (the setup is real)', async () => {
    expect((await fetch(`${basicUpstream.url}/v2/team/app/manifests/v1`)).status).toBe(401);
  });

  it('pulls through the cache with the rule’s credentials: digests equal the upstream’s', async () => {
    expectSameImage(await pull(imageRef(cache.url, 'basic/team/app', 'v1')), basicImage);
  });

  it('accessTokenEnv: the token comes from the server’s environment', async () => {
    expectSameImage(await pull(imageRef(cache.url, 'basic-env/team/app', 'v1')), basicImage);
  });

  it.each(['basic-wrong', 'basic-none'])('%s: not found (404), never a 5xx', async (prefix) => {
    expect(await statuses(prefix, 'team/app', basicImage)).toEqual({ manifest: 404, code: 'MANIFEST_UNKNOWN', blob: 404 });
    const r = await skopeoCopy(imageRef(cache.url, `${prefix}/team/app`, 'v1'), scratchDir('pull-'));
    expect(r.code).not.toBe(0);
  });
});

describe('token auth upstream (distribution 2.8 auth.token + our token server)', () => {
  it('the registry refuses anonymous pulls and challenges with our realm', async () => {
    const res = await fetch(`${tokenUpstream.url}/v2/team/tok/manifests/v1`);
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toContain(`realm="${tokens.realm}"`);
  });

  it('credentialsSecret: pulls through the cache; the secret is read once; the token server got the Basic credentials', async () => {
    tokens.requests.length = 0;
    expectSameImage(await pull(imageRef(cache.url, 'token-secret/team/tok', 'v1')), tokenImage);
    expectSameImage(await pull(imageRef(cache.url, 'token-secret/team/tok', tokenImage.digest)), tokenImage);
    expect(secrets.reads).toEqual(['pullthrough/token-upstream']);
    const basic = `Basic ${Buffer.from(`${ROBOT}:${ROBOT_TOKEN}`).toString('base64')}`;
    expect(tokens.requests.length).toBeGreaterThan(0);
    expect(tokens.requests.every((r) => r.authorization === basic && r.status === 200)).toBe(true);
    expect(tokens.requests.some((r) => r.granted.includes('team/tok:pull'))).toBe(true);
  });

  it('wrong credentials (the token server says 401) or none (an anonymous token the registry refuses): 404, never a 5xx', async () => {
    expect(await statuses('token-wrong', 'team/tok', tokenImage)).toEqual({ manifest: 404, code: 'MANIFEST_UNKNOWN', blob: 404 });
    expect(await statuses('token-none', 'team/tok', tokenImage)).toEqual({ manifest: 404, code: 'MANIFEST_UNKNOWN', blob: 404 });
    expect(tokens.requests.some((r) => r.status === 401)).toBe(true);
    expect(tokens.requests.some((r) => r.authorization === undefined && r.granted.length === 0)).toBe(true);
  });

  it('a secret that does not exist: 503 UNAVAILABLE (the cache cannot tell), not 500', async () => {
    const res = await fetch(`${cache.url}/v2/token-missing-secret/team/tok/manifests/v1`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('UNAVAILABLE');
  });
});

describe('client auth mode iam (login-password) in front of an authenticated upstream', () => {
  const loginAs = (who: typeof TEST_USER) => createLoginPassword({ region: 'us-east-1', credentials: who, endpoint: sts.url });

  it('skopeo pulls with user AWS and a login password of a matching principal; digests equal the upstream’s', async () => {
    const dir = scratchDir('pull-');
    assertSkopeoOk(await skopeoCopy(imageRef(iamCache.url, 'basic/team/app', 'v1'), dir, { creds: `AWS:${await loginAs(TEST_USER)}` }));
    expect(sha256(readFileSync(join(dir, 'manifest.json')))).toBe(basicImage.digest);
    expect(sts.requests.some((r) => r.status === 200)).toBe(true);
  });

  it('is refused without credentials, with a stranger’s AWS identity, and for a prefix the principal may not pull', async () => {
    const attempts = [
      await skopeoCopy(imageRef(iamCache.url, 'basic/team/app', 'v1'), scratchDir('pull-')),
      await skopeoCopy(imageRef(iamCache.url, 'basic/team/app', 'v1'), scratchDir('pull-'), { creds: `AWS:${await loginAs(TEST_STRANGER)}` }),
      await skopeoCopy(imageRef(iamCache.url, 'other/team/app', 'v1'), scratchDir('pull-'), { creds: `AWS:${await loginAs(TEST_USER)}` }),
    ];
    for (const r of attempts) {
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/unauthorized|authentication required|denied|401|403/i);
    }
  });
});

describe('secrecy', () => {
  it('no upstream credential appears in the server log (DEBUG level)', () => {
    const log = readFileSync(cache.logPath, 'utf8');
    expect(log.length).toBeGreaterThan(0);
    for (const secret of [TEST_REGISTRY_PASSWORD, ROBOT_TOKEN, Buffer.from(`${ROBOT}:${ROBOT_TOKEN}`).toString('base64'), Buffer.from(`${TEST_REGISTRY_USER}:${TEST_REGISTRY_PASSWORD}`).toString('base64')]) {
      expect(log).not.toContain(secret);
    }
  });
});
