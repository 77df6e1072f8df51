/**
 * Upstream credentials per pull-through cache rule: static, from an environment variable, or from a Secrets
 * Manager secret read lazily and cached (the real SDK client against the loopback stand-in), and where they go:
 * only to the rule's upstream and its token realm, never to a redirect target, another realm or another rule's
 * upstream, and never into the logs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { parseConfig, readEnvironment } from '../../shared/config.js';
import { buildRuntime, type Runtime } from '../../shared/runtime.js';
import { createUpstreamClient } from '../../shared/upstream/client.js';
import { credentialsForRule, parseSecret, SECRET_TTL_MS, secretCredentials } from '../../shared/upstream/credentials.js';
import { UpstreamError } from '../../shared/upstream/errors.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { secretArn, secretsClientEnv, startSecretsStandin, type SecretsStandin } from '../support/secrets-standin.js';

const USER = 'robot';
const TOKEN = 'dckr_pat_upstream-credentials-test-0123456789';
const basicOf = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  vi.unstubAllEnvs();
  vi.restoreAllMocks();
  while (cleanups.length) await cleanups.pop()!();
});

/** A loopback server recording the Authorization header of every request it gets. */
async function recorder(handle: (req: IncomingMessage, res: ServerResponse, self: string) => void) {
  const seen: Array<{ path: string; authorization?: string }> = [];
  let self = '';
  const server = createServer((req, res) => {
    seen.push({ path: req.url ?? '/', authorization: req.headers.authorization });
    handle(req, res, self);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  self = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cleanups.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  return { url: self, host: new URL(self).host, seen };
}

describe('config: where a rule’s credentials come from', () => {
  const rule = { prefix: 'p', upstream: 'https://registry.example' };
  it('accessTokenEnv reads the token from the environment at load; an unset variable stops the config', () => {
    const cfg = parseConfig({ rules: [{ ...rule, username: USER, accessTokenEnv: 'UPSTREAM_TOKEN' }] }, { UPSTREAM_TOKEN: TOKEN });
    expect(cfg.rules[0].accessToken).toBe(TOKEN);
    expect(() => parseConfig({ rules: [{ ...rule, username: USER, accessTokenEnv: 'UPSTREAM_TOKEN' }] }, {})).toThrow(/UPSTREAM_TOKEN.*not set/);
  });
  it.each([
    [{ username: USER }, /go together/],
    [{ accessToken: TOKEN }, /go together/],
    [{ username: USER, accessToken: TOKEN, accessTokenEnv: 'X' }, /exclude each other/],
    [{ credentialsSecret: 'pullthrough/docker-hub', username: USER, accessToken: TOKEN }, /credentialsSecret replaces/],
    [{ username: USER, accessTokenEnv: 'not a name' }, /environment variable name/],
  ])('refuses %j', (extra, message) => expect(() => parseConfig({ rules: [{ ...rule, ...extra }] }, { X: 'x' })).toThrow(message));
  it('credentialsSecret alone is valid; a rule with it cannot get a client without a provider', () => {
    const cfg = parseConfig({ rules: [{ ...rule, credentialsSecret: secretArn('pullthrough/docker-hub') }] });
    expect(() => createUpstreamClient(cfg.rules[0])).toThrow(/credentials provider/);
  });
});

describe('secretCredentials: lazy, cached per container for 10 minutes', () => {
  const secret = JSON.stringify({ username: USER, accessToken: TOKEN });

  it('one read for many concurrent and later uses; a new read after the TTL picks up a rotation', async () => {
    const clock = { now: 1_000_000 };
    let value = secret;
    const readSecret = vi.fn(async () => value);
    const provider = secretCredentials({ secretId: 's', readSecret, now: () => clock.now });
    expect(readSecret).not.toHaveBeenCalled(); // lazy
    const all = await Promise.all(Array.from({ length: 20 }, () => provider()));
    expect(all.every((c) => c?.password === TOKEN)).toBe(true);
    clock.now += SECRET_TTL_MS - 1;
    await provider();
    expect(readSecret).toHaveBeenCalledTimes(1);
    value = JSON.stringify({ username: USER, accessToken: 'rotated' });
    clock.now += 1;
    expect((await provider())?.password).toBe('rotated');
    expect(readSecret).toHaveBeenCalledTimes(2);
  });

  it('keeps the last good value when a re-read fails, and asks again 30 s later', async () => {
    const clock = { now: 0 };
    const readSecret = vi.fn(async () => secret);
    const provider = secretCredentials({ secretId: 's', readSecret, now: () => clock.now });
    await provider();
    readSecret.mockRejectedValue(Object.assign(new Error('boom'), { name: 'InternalServiceError' }));
    clock.now += SECRET_TTL_MS;
    expect((await provider())?.password).toBe(TOKEN);
    expect((await provider())?.password).toBe(TOKEN);
    expect(readSecret).toHaveBeenCalledTimes(2);
    clock.now += 30_000;
    await provider();
    expect(readSecret).toHaveBeenCalledTimes(3);
  });

  it('no value yet → UpstreamError unavailable (a 503, not a 500); errors never quote the secret', async () => {
    const failing = secretCredentials({ secretId: 'pullthrough/x', readSecret: async () => Promise.reject(Object.assign(new Error(`denied ${TOKEN}`), { name: 'AccessDeniedException' })) });
    const err = await failing().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamError);
    expect((err as UpstreamError).failure).toBe('unavailable');
    expect((err as Error).message).toContain('AccessDeniedException');
    expect((err as Error).message).not.toContain(TOKEN);
    for (const text of [`{"username":"${USER}","token":"${TOKEN}"}`, `not json ${TOKEN}`, undefined]) {
      const bad = (() => {
        try {
          parseSecret('s', text);
        } catch (e) {
          return e as Error;
        }
      })();
      expect(bad?.message).toMatch(/not JSON with string "username" and "accessToken"/);
      expect(bad?.message).not.toContain(TOKEN);
    }
  });
});

describe('a rule’s credentials reach only its upstream and its token realm', () => {
  it('Bearer: Basic goes to the realm (another host, like auth.docker.io), never to the upstream, the blob CDN or a host the realm redirects to', async () => {
    const cdn = await recorder((_req, res) => res.writeHead(200, { 'Content-Length': '5' }).end('layer'));
    const elsewhere = await recorder((_req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"token":"tok-elsewhere"}'));
    let redirectToken = false;
    const realm = await recorder((req, res) => {
      if (redirectToken) return void res.writeHead(307, { Location: `${elsewhere.url}/token` }).end();
      if (req.headers.authorization !== basicOf(USER, TOKEN)) return void res.writeHead(401).end();
      res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"token":"tok-realm","expires_in":300}');
    });
    const upstream = await recorder((req, res, self) => {
      if (!req.headers.authorization?.startsWith('Bearer tok-')) {
        return void res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="${realm.url}/token",service="up"` }).end();
      }
      if (req.url?.includes('/blobs/')) return void res.writeHead(307, { Location: `${cdn.url}/cdn/blob` }).end();
      void self;
      res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"tags":["v1"]}');
    });
    // The realm and its redirect target are on loopback like every test server: the rule must name them (internalHosts).
    const rule = parseConfig({ rules: [{ prefix: 'p', upstream: upstream.url, credentialsSecret: 's', insecureRedirectHosts: [cdn.host], internalHosts: [realm.host, elsewhere.host] }] }).rules[0];
    const client = createUpstreamClient(rule, { credentials: secretCredentials({ secretId: 's', readSecret: async () => JSON.stringify({ username: USER, accessToken: TOKEN }) }) });

    expect((await client.listTags('team/app', {})).tags).toEqual(['v1']);
    const blob = await client.getBlob('team/app', `sha256:${'a'.repeat(64)}` as never);
    blob.stream.resume();
    // A token endpoint that redirects elsewhere: Authorization is dropped on the cross-origin hop.
    redirectToken = true;
    await client.listTags('team/other', {});

    const basic = basicOf(USER, TOKEN);
    expect(realm.seen.filter((r) => r.authorization === basic).length).toBeGreaterThanOrEqual(2);
    expect(upstream.seen.some((r) => r.authorization === basic)).toBe(false);
    expect(upstream.seen.filter((r) => r.authorization).every((r) => r.authorization!.startsWith('Bearer tok-'))).toBe(true);
    expect(cdn.seen).toHaveLength(1);
    expect(cdn.seen[0].authorization).toBeUndefined();
    expect(elsewhere.seen).toHaveLength(1);
    expect(elsewhere.seen[0].authorization).toBeUndefined();
  });

  it('Basic: the upstream gets it, the blob CDN does not; another rule’s upstream never gets it, even when it asks', async () => {
    let up: FakeUpstream | undefined;
    let other: FakeUpstream | undefined;
    up = await startFakeUpstream({ auth: { scheme: 'basic', username: USER, password: TOKEN }, redirectBlobs: true });
    other = await startFakeUpstream({ auth: { scheme: 'basic', username: USER, password: TOKEN } });
    cleanups.push(() => up?.close(), () => other?.close());
    const h = await createHarness([
      { prefix: 'mine', upstream: up.url, username: USER, accessToken: TOKEN, insecureRedirectHosts: [up.cdnHost!] },
      { prefix: 'theirs', upstream: other.url },
    ]);
    cleanups.push(() => h.close());
    const img = seedImage(up, 'app', 'v1', [Buffer.from('layer bytes')]);
    seedImage(other, 'app', 'v1', [Buffer.from('other bytes')]);
    expect((await h.request('GET', '/v2/mine/app/manifests/v1')).status).toBe(200);
    expect((await h.request('GET', `/v2/mine/app/blobs/${img.layerDigests[0]}`)).status).toBe(307);
    expect(up.requests.filter((r) => r.kind === 'cdn').map((r) => r.authorization)).toEqual([undefined]);
    expect(up.requests.some((r) => r.authorization === basicOf(USER, TOKEN))).toBe(true);

    const res = await h.request('GET', '/v2/theirs/app/manifests/v1');
    expect(res.status).toBe(404);
    expect(other.requests.every((r) => r.authorization === undefined)).toBe(true);
  });
});

describe('credentialsSecret through the composition root, the real SDK client and the Secrets Manager stand-in', () => {
  let standin: SecretsStandin;
  let runtime: Runtime;

  async function start(rules: unknown[]) {
    standin = await startSecretsStandin({ 'pullthrough/upstream': JSON.stringify({ username: USER, accessToken: TOKEN }) });
    cleanups.push(() => standin.close());
    for (const [k, v] of Object.entries(secretsClientEnv(standin))) vi.stubEnv(k, v);
    const dir = mkdtempSync(join(tmpdir(), 'pt-creds-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    runtime = await buildRuntime(readEnvironment({ PULLTHROUGH_DATA_DIR: dir, PULLTHROUGH_LOG_LEVEL: 'DEBUG' }), parseConfig({ rules }));
    cleanups.push(() => runtime.close());
  }
  const get = (path: string) => runtime.app({ method: 'GET', path, query: new URLSearchParams(), headers: {} });

  it('reads the secret once across many pulls (manifests, blobs, repositories), and never logs it', async () => {
    const up = await startFakeUpstream({ auth: { scheme: 'bearer', username: USER, password: TOKEN } });
    cleanups.push(() => up.close());
    const out: string[] = [];
    const capture = (chunk: unknown) => (out.push(String(chunk)), true);
    vi.spyOn(process.stdout, 'write').mockImplementation(capture);
    vi.spyOn(process.stderr, 'write').mockImplementation(capture);
    await start([
      { prefix: 'priv', upstream: up.url, credentialsSecret: secretArn('pullthrough/upstream'), ttlSeconds: 0 },
      { prefix: 'wrong', upstream: up.url, credentialsSecret: 'pullthrough/missing' },
    ]);
    const images = ['team/a', 'team/b', 'team/c'].map((repo) => seedImage(up, repo, 'v1', [Buffer.from(`${repo} layer`)]));
    for (const [i, repo] of ['team/a', 'team/b', 'team/c'].entries()) {
      for (let n = 0; n < 3; n++) expect((await get(`/v2/priv/${repo}/manifests/v1`)).status).toBe(200);
      expect((await get(`/v2/priv/${repo}/blobs/${images[i].layerDigests[0]}`)).status).toBe(307);
    }
    expect(standin.reads).toEqual([secretArn('pullthrough/upstream')]);
    expect(up.requests.filter((r) => r.kind === 'token').every((r) => r.authorization === basicOf(USER, TOKEN))).toBe(true);

    // A secret that cannot be read: 503 UNAVAILABLE (never 500), and still nothing secret in the logs.
    const res = await get('/v2/wrong/team/a/manifests/v1');
    expect(res.status).toBe(503);
    vi.restoreAllMocks();
    const logs = out.join('');
    expect(logs).toContain('blob filled'); // the logger did write (DEBUG) while we listened
    for (const secretForm of [TOKEN, Buffer.from(`${USER}:${TOKEN}`).toString('base64'), 'tok-']) expect(logs).not.toContain(secretForm);
  });

  it('an anonymous upstream never causes a read; a static rule never reads either', async () => {
    const up = await startFakeUpstream();
    cleanups.push(() => up.close());
    await start([
      { prefix: 'anon', upstream: up.url, credentialsSecret: 'pullthrough/upstream' },
      { prefix: 'static', upstream: up.url, username: USER, accessToken: TOKEN },
    ]);
    seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    expect((await get('/v2/anon/app/manifests/v1')).status).toBe(200);
    expect((await get('/v2/static/app/manifests/v1')).status).toBe(200);
    expect(standin.reads).toEqual([]);
    expect(credentialsForRule(parseConfig({ rules: [{ prefix: 'x', upstream: up.url }] }).rules[0], async () => 'never')).toBeTypeOf('function');
  });
});
