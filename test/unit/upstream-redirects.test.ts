/**
 * Upstream redirects on every request (registry.k8s.io redirects each manifest request to a regional registry
 * and blobs to S3; vanity hosts redirect the whole /v2/ API): manifests (GET and HEAD), tag lists, referrers
 * and blobs follow them, a bounded number of hops; the token challenge of the host that finally answers is
 * answered with the scope of *its* repository path; the rule's credentials go to that host only when the rule
 * lists it in `credentialHosts`; a realm named by such a host is checked like any other host.
 *
 * The "vanity host" is a loopback server redirecting `/v2/<name>/...` to the in-process fake registry's
 * `/v2/mirror/<name>/...`, which asks for Bearer tokens from its own realm and counts every request.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../shared/config.js';
import { createUpstreamClient } from '../../shared/upstream/client.js';
import { UpstreamError } from '../../shared/upstream/errors.js';
import { MAX_REDIRECTS } from '../../shared/upstream/exchange.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { startVanityHost } from '../support/vanity-host.js';

const USER = 'robot';
const PASSWORD = 'mirror-robot-secret';
const BASIC = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** A loopback HTTP server recording method, path and Authorization of each request. */
async function server(handle: (req: IncomingMessage, res: ServerResponse, self: string) => void) {
  const seen: Array<{ method: string; path: string; authorization?: string }> = [];
  let self = '';
  const s = createServer((req, res) => {
    seen.push({ method: req.method ?? 'GET', path: req.url ?? '/', authorization: req.headers.authorization });
    handle(req, res, self);
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  self = `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  cleanups.push(() => new Promise<void>((r) => (s.closeAllConnections(), s.close(() => r()))));
  return { url: self, host: new URL(self).host, seen };
}

/** A vanity host in front of `target`, moving names under `mirror/`; closed after the test. */
async function vanity(target: string) {
  const host = await startVanityHost(target, 'mirror');
  cleanups.push(() => host.close());
  return { ...host, seen: host.requests };
}

let registry: FakeUpstream;
async function setUp(opts: { redirectBlobs?: boolean } = {}) {
  registry = await startFakeUpstream({ auth: { scheme: 'bearer', username: USER, password: PASSWORD }, referrers: true, ...opts });
  cleanups.push(() => registry.close());
  const front = await vanity(registry.url);
  const img = seedImage(registry, 'mirror/team/app', 'v1', [Buffer.from('layer behind a vanity host')]);
  return { front, img };
}

const rule = (upstream: string, extra: Record<string, unknown>) =>
  parseConfig({ rules: [{ prefix: 'v', upstream, username: USER, accessToken: PASSWORD, ...extra }] }).rules[0];

describe('a vanity host that redirects the whole /v2/ API to a registry with its own token service', () => {
  it('manifest GET and HEAD, tag list, referrers and blob: followed; tokens for the final repository path, credentials where the rule allows', async () => {
    const { front, img } = await setUp();
    const client = createUpstreamClient(rule(front.url, { insecureRedirectHosts: [registry.host], credentialHosts: [registry.host] }));

    const got = await client.getManifest('team/app', 'v1', 1 << 20);
    expect(got.body.equals(img.body)).toBe(true);
    expect(got.digestHeader).toBe(img.digest);
    expect((await client.headManifest('team/app', img.digest)).digest).toBe(img.digest);
    expect((await client.listTags('team/app', {})).tags).toEqual(['v1']);
    expect((await client.getReferrers('team/app', img.digest as never, 1 << 20)).manifests).toEqual([]);
    const blob = await client.getBlob('team/app', img.layerDigests[0] as never);
    const chunks: Buffer[] = [];
    for await (const c of blob.stream) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('layer behind a vanity host');

    // Every request went to the vanity host first, with no Authorization (it never challenged).
    expect(front.seen.map((r) => `${r.method} ${r.path}`)).toEqual([
      'GET /v2/team/app/manifests/v1',
      `HEAD /v2/team/app/manifests/${img.digest}`,
      'GET /v2/team/app/tags/list',
      `GET /v2/team/app/referrers/${img.digest}`,
      `GET /v2/team/app/blobs/${img.layerDigests[0]}`,
    ]);
    expect(front.seen.every((r) => r.authorization === undefined)).toBe(true);
    // One token, for the repository path the registry knows, fetched with the rule's credentials.
    const tokens = registry.requests.filter((r) => r.kind === 'token');
    expect(tokens).toHaveLength(1);
    expect(new URL(tokens[0].path, registry.url).searchParams.get('scope')).toBe('repository:mirror/team/app:pull');
    expect(tokens[0].authorization).toBe(BASIC);
    // The registry got the Bearer token on every retried or later request, never the password.
    expect(registry.requests.filter((r) => r.kind !== 'token').every((r) => r.authorization === undefined || r.authorization.startsWith('Bearer tok-'))).toBe(true);
  });

  it('without credentialHosts the registry’s realm gets no credentials (anonymous token request → not found)', async () => {
    const { front } = await setUp();
    const client = createUpstreamClient(rule(front.url, { insecureRedirectHosts: [registry.host] }));
    const err = await client.getManifest('team/app', 'v1', 1 << 20).catch((e: unknown) => e);
    expect((err as UpstreamError).failure).toBe('denied');
    const tokens = registry.requests.filter((r) => r.kind === 'token');
    expect(tokens).toHaveLength(1);
    expect(tokens[0].authorization).toBeUndefined();
  });

  it('a plain-http redirect target not in insecureRedirectHosts is refused (nothing sent to it)', async () => {
    const { front } = await setUp();
    const err = await createUpstreamClient(rule(front.url, { credentialHosts: [registry.host] })).getManifest('team/app', 'v1', 1 << 20).catch((e: unknown) => e);
    expect((err as UpstreamError).message).toMatch(/refusing redirect to http:\/\/127\.0\.0\.1:\d+ \(https only, or a host in insecureRedirectHosts\)/);
    expect(registry.count()).toBe(0);
  });

  it('blob: vanity host → registry (its own 401 challenge) → CDN, and the pull through the cache stores the verified bytes', async () => {
    const { front, img } = await setUp({ redirectBlobs: true });
    const h = await createHarness([
      { prefix: 'v', upstream: front.url, username: USER, accessToken: PASSWORD, insecureRedirectHosts: [registry.host, registry.cdnHost!], credentialHosts: [registry.host] },
    ]);
    cleanups.push(() => h.close());
    const manifest = await h.request('GET', '/v2/v/team/app/manifests/v1');
    expect(manifest.headers['Docker-Content-Digest']).toBe(img.digest);
    const res = await h.request('GET', `/v2/v/team/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).toString()).toBe('layer behind a vanity host');
    const cdn = registry.requests.filter((r) => r.kind === 'cdn');
    expect(cdn.length).toBeGreaterThanOrEqual(1);
    expect(cdn.every((r) => r.authorization === undefined)).toBe(true);
    expect(registry.requests.some((r) => r.kind === 'blob' && r.path === `/v2/mirror/team/app/blobs/${img.layerDigests[0]}` && r.authorization?.startsWith('Bearer tok-'))).toBe(true);
  });
});

describe('bounds and realms', () => {
  it(`a redirect loop ends after ${MAX_REDIRECTS} hops with unavailable`, async () => {
    const loop = await server((req, res, self) => res.writeHead(302, { Location: `${self}${req.url}` }).end());
    const err = await createUpstreamClient(rule(loop.url, {})).getManifest('team/app', 'v1', 1 << 20).catch((e: unknown) => e);
    expect((err as UpstreamError).failure).toBe('unavailable');
    expect((err as Error).message).toMatch(new RegExp(`more than ${MAX_REDIRECTS} redirects`));
    expect(loop.seen).toHaveLength(MAX_REDIRECTS + 1);
  });

  it('a token realm named by a host reached through a redirect is checked like any host (internal: refused unless listed)', async () => {
    const realm = await server((_req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"token":"t-realm"}'));
    const target = await server((req, res) => {
      if (req.headers.authorization === 'Bearer t-realm') return void res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"tags":["a"]}');
      res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="${realm.url}/token",service="other"` }).end();
    });
    const front = await vanity(target.url);
    const refused = await createUpstreamClient(rule(front.url, { insecureRedirectHosts: [target.host] })).listTags('team/app', {}).catch((e: unknown) => e);
    expect((refused as Error).message).toMatch(/127\.0\.0\.1 is an internal address/);
    expect(realm.seen).toHaveLength(0);

    const allowed = createUpstreamClient(rule(front.url, { insecureRedirectHosts: [target.host], internalHosts: [realm.host] }));
    expect((await allowed.listTags('team/app', {})).tags).toEqual(['a']);
    expect(realm.seen.map((r) => [new URL(r.path, realm.url).searchParams.get('scope'), r.authorization])).toEqual([['repository:mirror/team/app:pull', undefined]]);
  });

  it('a token realm named by the rule’s own upstream gets the same address rules (internal: refused unless listed) and never becomes a redirect target', async () => {
    // The attack: a hostile upstream names a loopback "realm" to make the cache send GET /token into its own
    // network; before the fix the realm's host also stayed trusted, so blob redirects to it passed afterwards.
    const internal = await server((req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end(req.url?.startsWith('/token') ? '{"token":"t"}' : 'internal-secret'));
    const digest = `sha256:${'1'.repeat(64)}` as never;
    const hostile = await server((req, res) => {
      if (req.url?.includes('/blobs/')) return void res.writeHead(307, { Location: `https://${internal.host}/blob` }).end();
      if (req.headers.authorization === 'Bearer t') return void res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"tags":["a"]}');
      res.writeHead(401, { 'WWW-Authenticate': `Bearer realm="${internal.url}/token",service="x"` }).end();
    });
    const client = createUpstreamClient(rule(hostile.url, {}));
    for (let i = 0; i < 3; i++) {
      const err = await client.listTags('team/app', {}).catch((e: unknown) => e);
      expect((err as UpstreamError).failure).toBe('unavailable');
      expect((err as Error).message).toContain(`refusing to connect to ${internal.host}: 127.0.0.1 is an internal address (loopback)`);
    }
    // The realm's host is no redirect target either: not handed to a client, not followed.
    expect(await client.blobRedirect('team/app', digest)).toBeUndefined();
    expect(((await client.getBlob('team/app', digest).catch((e: unknown) => e)) as Error).message).toMatch(/127\.0\.0\.1 is an internal address/);
    expect(internal.seen).toHaveLength(0);

    // Listed in internalHosts, the realm issues the token.
    const listed = createUpstreamClient(rule(hostile.url, { internalHosts: [internal.host] }));
    expect((await listed.listTags('team/app', {})).tags).toEqual(['a']);
    expect(internal.seen.map((r) => new URL(r.path, internal.url).pathname)).toEqual(['/token']);
  });

  it('headBlob follows a registry hop, and takes a redirect elsewhere (a CDN) as "exists" without following it', async () => {
    const { front, img } = await setUp();
    const client = createUpstreamClient(rule(front.url, { insecureRedirectHosts: [registry.host], credentialHosts: [registry.host] }));
    expect(await client.headBlob('team/app', img.layerDigests[0] as never)).toEqual({ size: 'layer behind a vanity host'.length, digest: img.layerDigests[0] });
    const missing = await client.headBlob('team/app', `sha256:${'0'.repeat(64)}` as never).catch((e: unknown) => e);
    expect((missing as UpstreamError).failure).toBe('not-found');
    expect(registry.requests.filter((r) => r.kind === 'blob').map((r) => r.method)).toEqual(['HEAD', 'HEAD', 'HEAD']); // 401, retry, 404

    // A CDN-backed upstream: the HEAD redirect goes to storage (not a registry path), which is never asked.
    const cdnBacked = await server((_req, res) => res.writeHead(307, { Location: 'https://storage.invalid/bucket/object?sig=1' }).end());
    expect(await createUpstreamClient(rule(cdnBacked.url, {})).headBlob('team/app', img.layerDigests[0] as never)).toEqual({});
  });
});
