/**
 * Client auth in token mode, through the registry app (harness, fake upstream that records requests): the
 * guard's 401 challenge and 403, the token endpoint's GET (Basic) and POST (OAuth2 form) flows, mirror names,
 * the failed-login limiter, and that no password or token ever shows in a log line, an error body or an
 * upstream request.
 */
import { decodeJwt } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { IP_FACTOR } from '../../shared/auth/login-limiter.js';
import { hashPassword } from '../../shared/auth/passwords.js';
import type { RegistryResponse } from '../../shared/http/types.js';
import { createHarness, silentLog } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const HOST = 'cache.test:5000';
const SERVICE = HOST;
const PASSWORDS = { alice: 'alice-Pa55word-7d1f', bob: 'bob-Pa55word-93ac', root: 'root-Pa55word-0e42' };
const FAST = { N: 2 ** 10, r: 8, p: 1 };
const MAX_FAILURES = 3;
const WINDOW_SECONDS = 60;

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
let users: Array<{ username: string; passwordHash: string; prefixes: string[] }>;
/** Every response the tests saw, and every token issued, for the "no secret leaks" checks. */
const seen: RegistryResponse[] = [];
const issuedTokens: string[] = [];

const basic = (user: string, pw: string) => `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}`;
const text = (res: RegistryResponse) => (res.body === undefined ? '' : Buffer.from(res.body as Uint8Array).toString('utf8'));

async function req(method: string, path: string, headers: Record<string, string> = {}, opts: { body?: string; sourceIp?: string } = {}) {
  const res = await h.request(method, path, { host: HOST, ...headers }, opts);
  seen.push(res);
  return res;
}

/** GET /token with Basic credentials; returns the token (asserting 200). */
async function login(user: keyof typeof PASSWORDS, scopes: string[], sourceIp = '192.0.2.10'): Promise<string> {
  const q = new URLSearchParams({ service: SERVICE, account: user });
  for (const s of scopes) q.append('scope', s);
  const res = await req('GET', `/token?${q}`, { authorization: basic(user, PASSWORDS[user]) }, { sourceIp });
  expect(res.status, text(res)).toBe(200);
  const token = h.jsonOf(res).token as string;
  issuedTokens.push(token);
  return token;
}
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

beforeAll(async () => {
  users = [
    { username: 'alice', passwordHash: await hashPassword(PASSWORDS.alice, FAST), prefixes: ['local'] },
    { username: 'bob', passwordHash: await hashPassword(PASSWORDS.bob, FAST), prefixes: ['other'] },
    { username: 'root', passwordHash: await hashPassword(PASSWORDS.root, FAST), prefixes: ['*'] },
  ];
});

beforeEach(async () => {
  up = await startFakeUpstream();
  seedImage(up, 'app', 'v1', [Buffer.from('layer-one')]);
  h = await createHarness(
    [
      { prefix: 'local', upstream: up.url },
      { prefix: 'other', upstream: 'http://127.0.0.1:9' },
    ],
    { auth: { mode: 'token', users, failedLogins: { max: MAX_FAILURES, windowSeconds: WINDOW_SECONDS } } },
  );
});
afterEach(async () => {
  h.close();
  await up.close();
});

afterAll(() => {
  // No password and no token in any log line; no password in any response; tokens only in token responses.
  const logText = JSON.stringify(silentLog.lines);
  for (const pw of Object.values(PASSWORDS)) {
    expect(logText).not.toContain(pw);
    for (const res of seen) expect(text(res)).not.toContain(pw);
  }
  expect(issuedTokens.length).toBeGreaterThan(5);
  for (const token of issuedTokens) {
    expect(logText).not.toContain(token);
    expect(logText).not.toContain(token.split('.')[2]);
    for (const res of seen.filter((r) => r.status !== 200)) expect(text(res)).not.toContain(token.split('.')[2]);
  }
});

describe('the guard on /v2/', () => {
  it('answers an anonymous /v2/ with 401 UNAUTHORIZED and the Bearer challenge (no scope)', async () => {
    const res = await req('GET', '/v2/');
    expect(res.status).toBe(401);
    expect(res.headers['WWW-Authenticate']).toBe(`Bearer realm="http://${HOST}/token",service="${SERVICE}"`);
    expect(h.jsonOf(res).errors[0].code).toBe('UNAUTHORIZED');
    expect(res.headers['Docker-Distribution-API-Version']).toBe('registry/2.0');
  });

  it('adds the repository scope on name routes, and takes the scheme from X-Forwarded-Proto', async () => {
    const res = await req('GET', '/v2/local/app/manifests/v1', { 'x-forwarded-proto': 'https' });
    expect(res.status).toBe(401);
    expect(res.headers['WWW-Authenticate']).toBe(`Bearer realm="https://${HOST}/token",service="${SERVICE}",scope="repository:local/app:pull"`);
    const catalog = await req('GET', '/v2/_catalog');
    expect(catalog.headers['WWW-Authenticate']).toBe(`Bearer realm="http://${HOST}/token",service="${SERVICE}",scope="registry:catalog:*"`);
    expect(up.count()).toBe(0);
  });

  it('leaves the scope out for a name that breaks the grammar, and a hostile Host out of the header', async () => {
    const res = await req('GET', '/v2/Bad"Name/manifests/v1', { host: 'evil"\r\nx: y' });
    expect(res.headers['WWW-Authenticate']).toBe('Bearer realm="http://localhost/token",service="localhost"');
  });

  it('serves a pull with a token for the name, and /v2/ with any valid token', async () => {
    const token = await login('alice', ['repository:local/app:pull']);
    expect((await req('GET', '/v2/', bearer(token))).status).toBe(200);
    const res = await req('GET', '/v2/local/app/manifests/v1', bearer(token));
    expect(res.status).toBe(200);
    expect(res.headers['Docker-Content-Digest']).toMatch(/^sha256:/);
    // The token is not forwarded upstream (nor are client credentials).
    expect(up.requests.length).toBeGreaterThan(0);
    for (const r of up.requests) expect(r.authorization).toBeUndefined();
  });

  it('answers 403 DENIED to a valid token without pull on the name (another prefix)', async () => {
    const token = await login('bob', ['repository:local/app:pull']);
    const res = await req('GET', '/v2/local/app/manifests/v1', bearer(token));
    expect(res.status).toBe(403);
    expect(h.jsonOf(res).errors[0].code).toBe('DENIED');
    // alice's token for local/app does not cover local/other either
    const alice = await login('alice', ['repository:local/app:pull']);
    expect((await req('GET', '/v2/local/other/manifests/v1', bearer(alice))).status).toBe(403);
    expect(up.count()).toBe(0);
  });

  it('rejects missing, garbage, Basic, expired and other-audience tokens alike: 401, the challenge, one body', async () => {
    const token = await login('alice', ['repository:local/app:pull']);
    const path = '/v2/local/app/manifests/v1';
    const challenge = (host: string) => `Bearer realm="http://${host}/token",service="${host}",scope="repository:local/app:pull"`;
    const answers: Array<[RegistryResponse, string]> = [];
    answers.push([await req('GET', path), HOST]);
    answers.push([await req('GET', path, { authorization: 'Bearer not-a-token' }), HOST]);
    answers.push([await req('GET', path, { authorization: basic('alice', PASSWORDS.alice) }), HOST]);
    // The audience is cache.test:5000: the same token sent to another service name is refused.
    answers.push([await req('GET', path, { ...bearer(token), host: 'other.test' }), 'other.test']);
    h.clock.now += (300 + 31) * 1000; // expired beyond the 30 s tolerance
    answers.push([await req('GET', path, bearer(token)), HOST]);
    for (const [res, host] of answers) {
      expect(res.status).toBe(401);
      expect(res.headers['WWW-Authenticate']).toBe(challenge(host));
      expect(text(res)).toBe(text(answers[0][0]));
    }
    expect(up.count()).toBe(0);
  });

  it('accepts a token within the clock tolerance after its expiry', async () => {
    const token = await login('alice', ['repository:local/app:pull']);
    h.clock.now += (300 + 25) * 1000;
    expect((await req('GET', '/v2/local/app/manifests/v1', bearer(token))).status).toBe(200);
  });

  it('checks the canonical name: docker-hub style library/ and containerd ns mirror names', async () => {
    // A bare name with ?ns=<local upstream host> is local/app: alice (local) may, bob (other) may not.
    const alice = await login('alice', ['repository:app:pull']);
    expect(decodeJwt(alice).access).toEqual([{ type: 'repository', name: 'local/app', actions: ['pull'] }]);
    expect((await req('GET', `/v2/app/manifests/v1?ns=${up.host}`, bearer(alice))).status).toBe(200);
    const bob = await login('bob', ['repository:app:pull']);
    expect((await req('GET', `/v2/app/manifests/v1?ns=${up.host}`, bearer(bob))).status).toBe(403);
    // bob's ns form (other/app) does not open local/app either
    expect((await req('GET', '/v2/local/app/manifests/v1', bearer(bob))).status).toBe(403);
  });

  it('the catalog needs registry:catalog:*, granted only to *', async () => {
    const root = await login('root', ['registry:catalog:*']);
    expect((await req('GET', '/v2/_catalog', bearer(root))).status).toBe(200);
    const alice = await login('alice', ['registry:catalog:*']);
    expect((await req('GET', '/v2/_catalog', bearer(alice))).status).toBe(403);
  });

  it('a push needs a token like everything else, then is refused as UNSUPPORTED', async () => {
    expect((await req('POST', '/v2/local/app/blobs/uploads/')).status).toBe(401);
    const token = await login('alice', ['repository:local/app:pull,push']);
    const res = await req('POST', '/v2/local/app/blobs/uploads/', bearer(token));
    expect(res.status).toBe(405);
    expect(h.jsonOf(res).errors[0].code).toBe('UNSUPPORTED');
  });
});

describe('the token endpoint', () => {
  it('GET with Basic: 200 {token, access_token, expires_in, issued_at}, not cacheable, granting what was asked', async () => {
    const res = await req('GET', `/token?service=${SERVICE}&scope=repository:local/app:pull&account=alice`, { authorization: basic('alice', PASSWORDS.alice) });
    expect(res.status).toBe(200);
    expect(res.headers['Content-Type']).toBe('application/json');
    expect(res.headers['Cache-Control']).toBe('no-store');
    const body = h.jsonOf(res);
    issuedTokens.push(body.token);
    expect(Object.keys(body).sort()).toEqual(['access_token', 'expires_in', 'issued_at', 'token']);
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBe(300);
    expect(body.issued_at).toBe(new Date(Math.floor(h.clock.now / 1000) * 1000).toISOString());
    expect(decodeJwt(body.token)).toMatchObject({ sub: 'user:alice', aud: SERVICE, iss: 'pullthrough' });
  });

  it('POST with the OAuth2 password form (containerd), two scopes in one token', async () => {
    const form = new URLSearchParams({ grant_type: 'password', username: 'alice', password: PASSWORDS.alice, service: SERVICE, client_id: 'containerd-client' });
    form.append('scope', 'repository:local/app:pull');
    form.append('scope', 'repository:local/tools/x:pull');
    const res = await req('POST', '/token', { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' }, { body: form.toString(), sourceIp: '192.0.2.20' });
    expect(res.status, text(res)).toBe(200);
    const { token, access_token } = h.jsonOf(res);
    issuedTokens.push(token);
    expect(access_token).toBe(token);
    const names = (decodeJwt(token).access as Array<{ name: string }>).map((a) => a.name);
    expect(names).toEqual(expect.arrayContaining(['local/app', 'local/tools/x']));
    expect((await req('GET', '/v2/local/app/manifests/v1', bearer(token))).status).toBe(200);
  });

  it('two scope parameters on GET give one token for both names', async () => {
    seedImage(up, 'base', 'v2', [Buffer.from('layer-two')]);
    const token = await login('alice', ['repository:local/app:pull', 'repository:local/base:pull']);
    expect((await req('GET', '/v2/local/app/manifests/v1', bearer(token))).status).toBe(200);
    expect((await req('GET', '/v2/local/base/manifests/v2', bearer(token))).status).toBe(200);
  });

  it('a login without scopes (docker login) gets a token with empty access, which still opens /v2/', async () => {
    const token = await login('alice', []);
    expect(decodeJwt(token).access).toEqual([]);
    expect((await req('GET', '/v2/', bearer(token))).status).toBe(200);
    expect((await req('GET', '/v2/local/app/manifests/v1', bearer(token))).status).toBe(403);
  });

  it('answers anonymous, wrong-password and unknown-user requests with 401 and a Basic challenge', async () => {
    const anonymous = await req('GET', `/token?service=${SERVICE}&scope=repository:local/app:pull`);
    expect(anonymous.status).toBe(401);
    expect(h.jsonOf(anonymous).errors[0].code).toBe('UNAUTHORIZED');
    expect(anonymous.headers['WWW-Authenticate']).toBe(`Basic realm="${SERVICE}",charset="UTF-8"`);
    const wrong = await req('GET', '/token', { authorization: basic('alice', PASSWORDS.bob) });
    const unknown = await req('GET', '/token', { authorization: basic('mallory', PASSWORDS.alice) });
    for (const res of [wrong, unknown]) {
      expect(res.status).toBe(401);
      expect(h.jsonOf(res)).toEqual({ errors: [{ code: 'UNAUTHORIZED', message: 'incorrect username or password' }] });
    }
    const form = new URLSearchParams({ grant_type: 'password', username: 'alice', password: 'nope' });
    expect((await req('POST', '/token', { 'content-type': 'application/x-www-form-urlencoded' }, { body: form.toString() })).status).toBe(401);
  });

  it('refuses other methods, other content types and other grant types', async () => {
    expect((await req('PUT', '/token')).status).toBe(405);
    expect((await req('POST', '/token', { 'content-type': 'application/json' }, { body: '{}' })).status).toBe(400);
    const refresh = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: 'x', service: SERVICE });
    expect((await req('POST', '/token', { 'content-type': 'application/x-www-form-urlencoded' }, { body: refresh.toString() })).status).toBe(400);
  });

  it(`after ${MAX_FAILURES} failures of one username from one IP answers 429 with Retry-After without checking the password; other users of that IP and other IPs are not affected`, async () => {
    const shared = '198.51.100.7'; // a NAT or a shared CI runner: one misconfigured job, other users behind it
    for (let i = 0; i < MAX_FAILURES; i++) {
      expect((await req('GET', '/token', { authorization: basic('alice', `guess-${i}`) }, { sourceIp: shared })).status).toBe(401);
    }
    const limited = await req('GET', '/token', { authorization: basic('alice', PASSWORDS.alice) }, { sourceIp: shared });
    expect(limited.status).toBe(429);
    expect(h.jsonOf(limited).errors[0].code).toBe('TOOMANYREQUESTS');
    expect(Number(limited.headers['Retry-After'])).toBe(WINDOW_SECONDS);
    // Another user behind the same address logs in with the right password; alice from another IP too.
    await login('bob', ['repository:other/app:pull'], shared);
    await login('alice', ['repository:local/app:pull'], '198.51.100.8');
    // Once the window has passed, alice may try again from the first IP.
    h.clock.now += WINDOW_SECONDS * 1000;
    await login('alice', ['repository:local/app:pull'], shared);
    expect(silentLog.lines.some((l) => l.message === 'login failed')).toBe(true);
  });

  it(`limits one IP across usernames at ${IP_FACTOR} × ${MAX_FAILURES} failures (password spraying)`, async () => {
    const sprayer = '203.0.113.9';
    for (let i = 0; i < IP_FACTOR * MAX_FAILURES; i++) {
      expect((await req('GET', '/token', { authorization: basic(`user-${i}`, 'guess') }, { sourceIp: sprayer })).status).toBe(401);
    }
    expect((await req('GET', '/token', { authorization: basic('root', PASSWORDS.root) }, { sourceIp: sprayer })).status).toBe(429);
    await login('root', ['repository:local/app:pull'], '203.0.113.10');
  });
});

describe('mode none', () => {
  it('has no token endpoint and no guard', async () => {
    const open = await createHarness([{ prefix: 'local', upstream: up.url }]);
    try {
      expect((await open.request('GET', '/token')).status).toBe(404);
      expect((await open.request('GET', '/v2/')).status).toBe(200);
    } finally {
      open.close();
    }
  });
});
