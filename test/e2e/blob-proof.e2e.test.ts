/**
 * Blobs stored for one rule, asked for under another (blob-confirm.ts), with real parts: Debian's docker-registry
 * holds one image under two repositories, the real local server has a rule for each (each behind its own counting
 * proxy), skopeo pulls. The registry's blob HEAD names the digest and the size, so the second rule's pull is
 * served the stored layers after HEADs only: no blob is downloaded twice. A third rule points at a catch-all web
 * server (200 and its page for every path; no registry stands in for it): it is not handed the stored layer.
 * A fourth, behind a fault proxy that answers every blob HEAD 401 (as public.ecr.aws does) and holds a layer's body
 * until the test releases it, shows the proof by the bytes bounded by the wait (blob-prove.ts): the request hops
 * while the proof runs, a retry joins it, and the pull after it gets the stored layer with one download in all.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { pushBlob, pushManifest, pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256 } from '../support/pull.js';
import { imageRef } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

let upstream: UpstreamRegistry;
let viaA: CountingProxy;
let viaB: CountingProxy;
let catchAll: Server;
let catchAllRequests: string[];
let cache: LocalServer;
let image: PushedImage;

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  image = await pushSinglePlatformImage(upstream.url, 'team/a', 'v1', { format: 'docker', arch: 'amd64', layerSources: ['/usr/share/common-licenses'] });
  // The same image under a second repository (its blobs copied over the registry API).
  for (const blob of image.blobs) {
    const data = Buffer.from(await (await fetch(`${upstream.url}/v2/team/a/blobs/${blob.digest}`)).arrayBuffer());
    await pushBlob(upstream.url, 'team/b', { ...blob, data });
  }
  await pushManifest(upstream.url, 'team/b', 'v1', image.mediaType, image.manifest);
  viaA = await startCountingProxy(upstream.url);
  viaB = await startCountingProxy(upstream.url);
  catchAllRequests = [];
  catchAll = createServer((req, res) => {
    catchAllRequests.push(`${req.method} ${req.url}`);
    const page = Buffer.from('<html><body>It works!</body></html>\n');
    res.writeHead(200, { 'Content-Type': 'text/html', 'Content-Length': String(page.length) }).end(req.method === 'HEAD' ? undefined : page);
  });
  await new Promise<void>((r) => catchAll.listen(0, '127.0.0.1', r));
  cache = await startLocalServer({
    rules: [
      { prefix: 'one', upstream: viaA.url },
      { prefix: 'two', upstream: viaB.url },
      { prefix: 'open', upstream: `http://127.0.0.1:${(catchAll.address() as AddressInfo).port}` },
    ],
  });
}, 120_000);

afterAll(async () => {
  await cache?.stop();
  await viaA?.stop();
  await viaB?.stop();
  await new Promise<void>((r) => (catchAll ? catchAll.close(() => r()) : r()));
  await upstream?.stop();
});

const blobRequests = (proxy: CountingProxy) => proxy.requests.filter((r) => /\/blobs\/sha256:/.test(r.path));

describe('a blob stored for one rule, pulled through another', () => {
  it('is served after the registry\'s HEAD named its digest and size: no second download', async () => {
    const first = await pullImage(imageRef(cache.url, 'one/team/a', 'v1'));
    expect(sha256(first.manifest)).toBe(image.digest);
    expect(blobRequests(viaA).filter((r) => r.method === 'GET')).toHaveLength(image.blobs.length);

    const second = await pullImage(imageRef(cache.url, 'two/team/b', 'v1'));
    expect(second.manifest.equals(image.manifest)).toBe(true);
    expect(second.blobs.map((b) => b.name).sort()).toEqual(image.blobs.map((b) => b.digest).sort());
    for (const b of second.blobs) expect(b.actual).toBe(b.name);
    const proofs = blobRequests(viaB);
    expect(proofs.map((r) => `${r.method} ${r.status}`)).toEqual(image.blobs.map(() => 'HEAD 200'));
  });

  it('a catch-all upstream (200 to every HEAD) is not handed a stored layer: 502 DIGEST_INVALID after its GET', async () => {
    const layer = image.blobs[image.blobs.length - 1].digest;
    const res = await fetch(`${cache.url}/v2/open/x/y/blobs/${layer}`, { redirect: 'manual' });
    expect(res.status).toBe(502);
    expect(res.headers.get('location')).toBeNull();
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('DIGEST_INVALID');
    expect(catchAllRequests).toEqual([`HEAD /v2/x/y/blobs/${layer}`, `GET /v2/x/y/blobs/${layer}`]);
  });
});

describe('a proof by the bytes that outlasts the wait (a registry refusing blob HEADs)', () => {
  let held: FaultProxy;
  let server: LocalServer;
  let release: () => void = () => undefined;
  const layerOf = () => image.blobs[image.blobs.length - 1].digest;

  beforeAll(async () => {
    held = await startFaultProxy(upstream.url);
    held.add({ method: 'HEAD', path: /\/blobs\/sha256:/, kind: 'status', status: 401 });
    held.add({ method: 'GET', path: new RegExp(`/blobs/${layerOf()}$`), kind: 'hold', until: new Promise<void>((r) => (release = r)) });
    server = await startLocalServer({
      rules: [{ prefix: 'one', upstream: upstream.url }, { prefix: 'held', upstream: held.url }],
      blobFill: { waitSeconds: 1 },
    });
  }, 60_000);

  afterAll(async () => {
    release();
    await server?.stop();
    await held?.stop();
  });

  it('hops while the proof runs, the retry joins it, and the pull after it gets the stored layer: one download', async () => {
    const layer = layerOf();
    const stored = await fetch(`${server.url}/v2/one/team/a/blobs/${layer}`);
    expect(sha256(Buffer.from(await stored.arrayBuffer()))).toBe(layer);
    const url = `${server.url}/v2/held/team/b/blobs/${layer}`;
    const first = await fetch(url, { redirect: 'manual' });
    expect(first.status).toBe(307);
    expect(first.headers.get('location')).toMatch(/\?pt-hop=1$/);
    const second = await fetch(`${url}?pt-hop=1`, { redirect: 'manual' });
    expect(second.status).toBe(307);
    expect(second.headers.get('location')).toMatch(/\?pt-hop=2$/);
    const layerGets = () => held.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${layer}`));
    expect(layerGets()).toHaveLength(1);

    release();
    const pulled = await pullImage(imageRef(server.url, 'held/team/b', 'v1'));
    expect(pulled.manifest.equals(image.manifest)).toBe(true);
    for (const b of pulled.blobs) expect(b.actual).toBe(b.name);
    expect(layerGets()).toHaveLength(1);
    expect(layerGets()[0].status).toBe(200);
    // Every blob was downloaded once through this rule's upstream, after a HEAD it refused.
    const blobs = held.requests.filter((r) => /\/blobs\/sha256:/.test(r.path));
    for (const b of image.blobs) {
      expect(blobs.filter((r) => r.path.endsWith(b.digest)).map((r) => `${r.method} ${r.status}`)).toContain('GET 200');
      expect(blobs.filter((r) => r.path.endsWith(b.digest) && r.method === 'GET')).toHaveLength(1);
    }
  });
});
