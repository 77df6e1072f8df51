/**
 * A rule whose upstream redirects the whole /v2/ API to another registry that wants its own token (the shape of
 * registry.k8s.io and of vanity registry hosts), end to end: a vanity host on loopback redirects
 * `/v2/<name>/...` to Debian's docker-registry (distribution 2.8) under `k8s-artifacts/images/<name>`, which sits
 * behind token auth (our token server issuing the ES256 JWTs it verifies). skopeo pulls through the real local
 * server; the cache follows the manifest, tag-list and blob redirects and answers the registry's challenge with a
 * token for the full repository path the registry knows. Credentials reach that registry's realm only for the
 * rule that lists it in `credentialHosts`. A second cache with `HTTP_PROXY` set pulls the same image through a
 * CONNECT proxy (test/support/connect-proxy.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256 } from '../support/pull.js';
import { imageRef, skopeoCopy, skopeoListTags } from '../support/skopeo.js';
import { scratchDir } from '../support/scratch.js';
import { startConnectProxy, type ConnectProxy } from '../support/connect-proxy.js';
import { startTokenServer, type TokenServer } from '../support/token-server.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';
import { startVanityHost, type VanityHost } from '../support/vanity-host.js';

const ROBOT = 'robot';
const ROBOT_TOKEN = 'k8s-mirror-robot-token-51c2';
const REPOSITORY = 'k8s-artifacts/images/pause';

let tokens: TokenServer;
let registry: UpstreamRegistry;
let front: VanityHost;
let cache: LocalServer;
let image: PushedImage;
let proxy: ConnectProxy;
let proxied: LocalServer;

beforeAll(async () => {
  // Push without auth, then restart the same registry data behind token auth.
  tokens = await startTokenServer({ users: { [ROBOT]: ROBOT_TOKEN } });
  const open = await startUpstreamRegistry();
  image = await pushSinglePlatformImage(open.url, REPOSITORY, '3.10', { format: 'oci', arch: 'amd64', layerSources: ['/usr/share/common-licenses'] });
  await open.stop();
  registry = await startUpstreamRegistry({ port: open.port, dataDir: open.dataDir, tokenAuth: tokens });
  front = await startVanityHost(registry.url, 'k8s-artifacts/images');
  const realmHost = new URL(tokens.realm).host;
  const redirected = { upstream: front.url, username: ROBOT, accessToken: ROBOT_TOKEN, insecureRedirectHosts: [new URL(registry.url).host], internalHosts: [realmHost] };
  cache = await startLocalServer({
    rules: [
      { prefix: 'k8s', ...redirected, credentialHosts: [new URL(registry.url).host] },
      { prefix: 'k8s-nocreds', ...redirected },
    ],
  });
  // The same rule in a cache whose upstream traffic must go through an egress proxy (HTTP_PROXY).
  proxy = await startConnectProxy();
  proxied = await startLocalServer({ rules: [{ prefix: 'k8s', ...redirected, credentialHosts: [new URL(registry.url).host] }] }, { env: { HTTP_PROXY: proxy.url } });
});

afterAll(async () => {
  await proxied?.stop();
  await proxy?.close();
  await cache?.stop();
  await front?.close();
  await registry?.stop();
  await tokens?.close();
});

describe('an upstream that redirects /v2/ to a registry with its own token service', () => {
  it('the setup is real: the vanity host redirects, the registry refuses anonymous pulls', async () => {
    const res = await fetch(`${front.url}/v2/pause/manifests/3.10`, { redirect: 'manual' });
    expect(res.status).toBe(307);
    expect(res.headers.get('location')).toBe(`${registry.url}/v2/${REPOSITORY}/manifests/3.10`);
    expect((await fetch(res.headers.get('location')!)).status).toBe(401);
  });

  it('skopeo pulls k8s/pause:3.10 through the cache: manifest and every blob equal the registry’s', async () => {
    tokens.requests.length = 0;
    const got = await pullImage(imageRef(cache.url, 'k8s/pause', '3.10'));
    expect(sha256(got.manifest)).toBe(image.digest);
    expect(got.blobs.map((b) => b.name).sort()).toEqual(image.blobs.map((b) => b.digest).sort());
    for (const b of got.blobs) expect(b.actual).toBe(b.name);
    // Tokens were asked for the registry's own repository path, with the rule's credentials, and granted.
    expect(tokens.requests.length).toBeGreaterThan(0);
    expect(tokens.requests.every((r) => r.scope === `repository:${REPOSITORY}:pull`)).toBe(true);
    const basic = `Basic ${Buffer.from(`${ROBOT}:${ROBOT_TOKEN}`).toString('base64')}`;
    expect(tokens.requests.every((r) => r.authorization === basic && r.granted.includes(`${REPOSITORY}:pull`))).toBe(true);
    // The vanity host saw manifest and blob requests and never an Authorization header.
    expect(front.requests.some((r) => r.path === '/v2/pause/manifests/3.10')).toBe(true);
    expect(front.requests.some((r) => r.path.startsWith('/v2/pause/blobs/sha256:'))).toBe(true);
    expect(front.requests.every((r) => r.authorization === undefined)).toBe(true);
  });

  it('tags/list follows the redirect too', async () => {
    const r = await skopeoListTags(`${cache.url}/k8s/pause`);
    expect(r.code, r.stderr).toBe(0);
    expect(r.tags).toEqual(['3.10']);
  });

  it('a rule without credentialHosts sends no credentials to the redirected registry’s realm: not found, never a 5xx', async () => {
    tokens.requests.length = 0;
    const res = await fetch(`${cache.url}/v2/k8s-nocreds/pause/manifests/3.10`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('MANIFEST_UNKNOWN');
    expect(tokens.requests.length).toBeGreaterThan(0);
    expect(tokens.requests.every((r) => r.authorization === undefined && r.granted.length === 0)).toBe(true);
    expect((await skopeoCopy(imageRef(cache.url, 'k8s-nocreds/pause', '3.10'), scratchDir('pull-'))).code).not.toBe(0);
  });

  it('HTTP_PROXY: the whole chain (vanity host, registry, token realm) goes through the proxy; the pull is the same', async () => {
    const got = await pullImage(imageRef(proxied.url, 'k8s/pause', '3.10'));
    expect(sha256(got.manifest)).toBe(image.digest);
    for (const b of got.blobs) expect(b.actual).toBe(b.name);
    expect(new Set(proxy.connects)).toEqual(new Set([front.host, new URL(registry.url).host, new URL(tokens.realm).host]));
  });
});
