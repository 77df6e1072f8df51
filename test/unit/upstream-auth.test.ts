/**
 * The upstream client's auth dance against the in-process fake upstream, which counts every call.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../shared/config.js';
import { createTokenAuth, TOKEN_FAILURE_BACKOFF_MS } from '../../shared/upstream/auth.js';
import { parseChallenge } from '../../shared/upstream/challenge.js';
import { createUpstreamClient } from '../../shared/upstream/client.js';
import { UpstreamError } from '../../shared/upstream/errors.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let up: FakeUpstream | undefined;
let h: Awaited<ReturnType<typeof createHarness>> | undefined;
afterEach(async () => {
  h?.close();
  await up?.close();
  h = undefined;
  up = undefined;
});

describe('parseChallenge', () => {
  it.each([
    ['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"',
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' } }],
    ['Basic realm="Registry Realm"', { scheme: 'basic', params: { realm: 'Registry Realm' } }],
    ['bearer realm=https://x/token, service=x', { scheme: 'bearer', params: { realm: 'https://x/token', service: 'x' } }],
    ['Bearer realm="a\\"b"', { scheme: 'bearer', params: { realm: 'a"b' } }],
  ])('%s', (header, expected) => expect(parseChallenge(header)).toEqual(expected));
  it('returns undefined for no header', () => expect(parseChallenge(null)).toBeUndefined());
});

describe('Bearer token dance', () => {
  it('challenge → token with Basic credentials → retry; tokens cached per scope until expiry', async () => {
    up = await startFakeUpstream({ auth: { scheme: 'bearer', username: 'robot', password: 's3cret' } });
    h = await createHarness([{ prefix: 'p', upstream: up.url, username: 'robot', accessToken: 's3cret' }]);
    const img = seedImage(up, 'team/app', 'v1', [Buffer.from('layer')]);
    seedImage(up, 'team/other', 'v1', [Buffer.from('other')]);

    const res = await h.request('GET', '/v2/p/team/app/manifests/v1');
    expect(res.status).toBe(200);
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    // 401, token, retry.
    expect(up.requests.map((r) => `${r.method} ${r.kind}`)).toEqual(['GET manifest', 'GET token', 'GET manifest']);
    const tokenReq = up.requests[1];
    expect(tokenReq.path).toContain('service=fake-registry');
    expect(tokenReq.path).toContain(`scope=${encodeURIComponent('repository:team/app:pull')}`);
    expect(tokenReq.authorization).toBe(`Basic ${Buffer.from('robot:s3cret').toString('base64')}`);

    up.reset();
    const blob = await h.request('GET', `/v2/p/team/app/blobs/${img.layerDigests[0]}`);
    expect(blob.status).toBe(307);
    // Same scope: cached token, no 401 and no token request.
    expect(up.requests.map((r) => `${r.method} ${r.kind}`)).toEqual(['GET blob']);
    expect(up.requests[0].authorization).toMatch(/^Bearer tok-/);

    up.reset();
    await h.request('GET', '/v2/p/team/other/manifests/v1');
    // Another scope: the known challenge lets the client fetch the token first.
    expect(up.requests.map((r) => `${r.method} ${r.kind}`)).toEqual(['GET token', 'GET manifest']);
  });

  it('refetches a token once the cached one expired', async () => {
    up = await startFakeUpstream({ auth: { scheme: 'bearer', username: 'u', password: 'p', tokenSeconds: 6 } });
    h = await createHarness([{ prefix: 'p', upstream: up.url, username: 'u', accessToken: 'p', ttlSeconds: 0 }]);
    seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    await h.request('GET', '/v2/p/app/manifests/v1');
    expect(up.count({ kind: 'token' })).toBe(1);
    await new Promise((r) => setTimeout(r, 1200)); // 6 s token minus the 5 s margin
    await h.request('GET', '/v2/p/app/manifests/v1');
    expect(up.count({ kind: 'token' })).toBe(2);
  });

  it('answers NAME-level 404 (not 500) when the upstream refuses the credentials', async () => {
    up = await startFakeUpstream({ auth: { scheme: 'bearer', username: 'u', password: 'right' } });
    h = await createHarness([{ prefix: 'p', upstream: up.url, username: 'u', accessToken: 'wrong' }]);
    seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const res = await h.request('GET', '/v2/p/app/manifests/v1');
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('MANIFEST_UNKNOWN');
  });
});

describe('Basic auth and anonymous access', () => {
  it('answers a Basic challenge with the rule credentials', async () => {
    up = await startFakeUpstream({ auth: { scheme: 'basic', username: 'u', password: 'pw' } });
    h = await createHarness([{ prefix: 'p', upstream: up.url, username: 'u', accessToken: 'pw' }]);
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const res = await h.request('GET', '/v2/p/app/manifests/v1');
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    expect(up.requests.map((r) => r.authorization ?? 'none')).toEqual(['none', `Basic ${Buffer.from('u:pw').toString('base64')}`]);
    up.reset();
    await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(up.requests.map((r) => r.authorization ?? 'none')).toEqual([`Basic ${Buffer.from('u:pw').toString('base64')}`]);
  });

  it('sends no Authorization to an anonymous upstream', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    await h.request('GET', '/v2/p/app/manifests/v1');
    expect(up.requests.every((r) => r.authorization === undefined)).toBe(true);
  });
});

describe('blob redirects', () => {
  it('refuses a plain-http redirect to another host unless config allows it', async () => {
    up = await startFakeUpstream({ redirectBlobs: true });
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const img = seedImage(up, 'app', 'v1', [Buffer.from('layer')]);
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(503);
    expect(up.count({ kind: 'cdn' })).toBe(0);
  });

  it('follows a redirect to another origin without forwarding Authorization', async () => {
    up = await startFakeUpstream({ auth: { scheme: 'bearer', username: 'u', password: 'p' }, redirectBlobs: true });
    h = await createHarness([{ prefix: 'p', upstream: up.url, username: 'u', accessToken: 'p', insecureRedirectHosts: [up.cdnHost!] }]);
    const layer = Buffer.from('layer behind a CDN');
    const img = seedImage(up, 'app', 'v1', [layer]);
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    const cdn = up.requests.filter((r) => r.kind === 'cdn');
    expect(cdn).toHaveLength(1);
    expect(cdn[0].authorization).toBeUndefined();
    expect(up.requests.filter((r) => r.kind === 'blob').at(-1)?.authorization).toMatch(/^Bearer tok-/);
  });
});

describe('a token realm that fails', () => {
  /** A loopback server answering `handle`, recording paths; closed after the test. */
  async function server(handle: (req: IncomingMessage, res: ServerResponse) => void) {
    const seen: string[] = [];
    const s = createServer((req, res) => (seen.push(req.url ?? '/'), handle(req, res)));
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    closers.push(() => new Promise<void>((r) => (s.closeAllConnections(), s.close(() => r()))));
    return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, host: `127.0.0.1:${(s.address() as AddressInfo).port}`, seen };
  }
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    while (closers.length) await closers.pop()!();
  });

  it('drops the cached challenge: the next request is challenged again and gets a token from the realm it names now', async () => {
    const dead = await server((_req, res) => res.writeHead(500).end());
    const live = await server((_req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"token":"live"}'));
    let realm = dead.url;
    const upstream = await server((req, res) => {
      if (req.headers.authorization === 'Bearer live') return void res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"tags":["v1"]}');
      res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="${realm}/token",service="s"` }).end();
    });
    const rule = parseConfig({ rules: [{ prefix: 'p', upstream: upstream.url, internalHosts: [dead.host, live.host] }] }).rules[0];
    const client = createUpstreamClient(rule);

    const first = await client.listTags('app', {}).catch((e: unknown) => e);
    expect((first as UpstreamError).message).toBe('token request: upstream answered 500');
    realm = live.url; // the registry's realm moved
    expect((await client.listTags('app', {})).tags).toEqual(['v1']);
    expect(dead.seen).toHaveLength(1);
    expect(live.seen).toHaveLength(1);
  });

  it(`a dead realm is asked again only after ${TOKEN_FAILURE_BACKOFF_MS / 1000} s; until then its challenge gets the same error at once`, async () => {
    let clock = 1_000_000;
    const fetched: string[] = [];
    const auth = createTokenAuth({
      now: () => clock,
      fetchToken: async (url) => {
        fetched.push(url.origin);
        if (url.origin === 'https://dead.example') throw new UpstreamError('unavailable', 'realm unreachable');
        return { status: 200, header: () => null, body: Readable.from([Buffer.from('{"token":"t"}')]) };
      },
    });
    const dead = parseChallenge('Bearer realm="https://dead.example/token",service="s"')!;
    const origin = 'https://registry.example';
    await expect(auth.answer(origin, dead, 'repository:app:pull', false)).rejects.toThrow('realm unreachable');
    expect(await auth.headerFor(origin, 'repository:app:pull')).toBeUndefined(); // challenge dropped: re-challenge
    await expect(auth.answer(origin, dead, 'repository:app:pull', false)).rejects.toThrow('realm unreachable');
    clock += TOKEN_FAILURE_BACKOFF_MS - 1;
    await expect(auth.answer(origin, dead, 'repository:app:pull', false)).rejects.toThrow('realm unreachable');
    expect(fetched).toEqual(['https://dead.example']);
    clock += 1;
    await expect(auth.answer(origin, dead, 'repository:app:pull', false)).rejects.toThrow('realm unreachable');
    expect(fetched).toEqual(['https://dead.example', 'https://dead.example']);

    // Another realm (the registry moved it) is asked at once, and its token is used from then on.
    const moved = parseChallenge('Bearer realm="https://moved.example/token",service="s"')!;
    expect(await auth.answer(origin, moved, 'repository:app:pull', false)).toBe('Bearer t');
    expect(await auth.headerFor(origin, 'repository:app:pull')).toBe('Bearer t');
    expect(fetched).toEqual(['https://dead.example', 'https://dead.example', 'https://moved.example']);
  });
});
