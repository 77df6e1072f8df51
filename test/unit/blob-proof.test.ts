/**
 * What proves that a name may be served a blob stored (or being filled) for another rule (blob-confirm.ts): a HEAD
 * of the name's own upstream naming the digest (`Docker-Content-Digest`) and the size at hand, else the bytes of
 * its own upstream's GET. A 2xx alone is no proof: a catch-all upstream (here a plain HTTP server answering 200
 * to every path with its own page, which no registry library can stand in for) must not be handed another
 * tenant's private blob by digest. A registry whose blob HEAD is refused while its GET works (public.ecr.aws
 * answers every blob HEAD 401; the fake upstream's forced status stands in for it) still pulls. And a request
 * never waits on another name's fill before its own upstream answered: a 404 or a failed proof answers at once.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const PAGE = Buffer.from('<html><body>It works!</body></html>\n');

/** A catch-all web server: 200 and its page for every path; `echoDigest` copies a `/blobs/<digest>` into the digest header. */
async function startCatchAll(echoDigest = false): Promise<{ url: string; requests: string[]; close: () => Promise<void> }> {
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const headers: Record<string, string> = { 'Content-Type': 'text/html', 'Content-Length': String(PAGE.length) };
    const digest = /\/blobs\/([^/?]+)/.exec(req.url ?? '')?.[1];
    if (echoDigest && digest) headers['Docker-Content-Digest'] = decodeURIComponent(digest);
    res.writeHead(200, headers).end(req.method === 'HEAD' ? undefined : PAGE);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

let priv: FakeUpstream;
let catchAll: Awaited<ReturnType<typeof startCatchAll>> | undefined;
let ecr: FakeUpstream | undefined;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  await priv?.close();
  await catchAll?.close();
  await ecr?.close();
  catchAll = ecr = undefined;
  await new Promise((r) => setTimeout(r, 50)); // fills cut off by the close settle before the data dir goes
  h?.close();
});

/** `priv` holds a private 640 KiB layer; `open` → the catch-all server; `ecr` → a fake registry refusing blob HEADs. */
async function setUp(opts: { echoDigest?: boolean; waitSeconds?: number } = {}) {
  priv = await startFakeUpstream();
  catchAll = await startCatchAll(opts.echoDigest);
  ecr = await startFakeUpstream();
  ecr.faults.status = { kind: 'blob', method: 'HEAD', code: 401 };
  const layer = randomBytes(640 * 1024);
  const digest = seedImage(priv, 'team/app', 'v1', [layer]).layerDigests[0] as Digest;
  h = await createHarness(
    [
      { prefix: 'priv', upstream: priv.url },
      { prefix: 'open', upstream: catchAll.url },
      { prefix: 'ecr', upstream: ecr.url },
    ],
    { blobFill: { waitSeconds: opts.waitSeconds ?? 5 } },
  );
  return { layer, digest };
}

/** Stores the layer for `priv` (a completed pull). */
async function storeForPriv(digest: Digest, layer: Buffer) {
  const res = await h.request('GET', `/v2/priv/team/app/blobs/${digest}`);
  expect(res.status).toBe(307);
  expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
}

describe('a blob stored for another rule', () => {
  for (const echoDigest of [false, true]) {
    const upstream = echoDigest ? 'a catch-all upstream echoing the digest header (not the size)' : 'a catch-all upstream (200 to every HEAD)';
    it(`${upstream} does not confirm it: its own GET decides (502 DIGEST_INVALID), nothing linked`, async () => {
      const { layer, digest } = await setUp({ echoDigest });
      await storeForPriv(digest, layer);
      catchAll!.requests.length = 0;
      const res = await h.request('GET', `/v2/open/x/y/blobs/${digest}`);
      expect(res.headers.Location).toBeUndefined();
      expect(res.status).toBe(502);
      expect(h.jsonOf(res).errors[0].code).toBe('DIGEST_INVALID');
      expect(catchAll!.requests).toEqual([`HEAD /v2/x/y/blobs/${digest}`, `GET /v2/x/y/blobs/${digest}`]);
      expect(await h.index.isLinked('open/x/y', digest)).toBe(false);
    });

    it(`${upstream}: a HEAD tells nothing of another tenant's pull, answered as for a digest nobody stored`, async () => {
      const { layer, digest } = await setUp({ echoDigest });
      const never = `sha256:${randomBytes(32).toString('hex')}`;
      const answer = async (d: string) => {
        catchAll!.requests.length = 0;
        const res = await h.request('HEAD', `/v2/open/x/y/blobs/${d}`);
        return { status: res.status, length: res.headers['Content-Length'], location: res.headers.Location, upstream: catchAll!.requests.map((r) => r.split(' ')[0]) };
      };
      const before = await answer(digest); // not stored yet: a miss
      await storeForPriv(digest, layer);
      const stored = await answer(digest); // stored for priv, not linked to open/x/y
      expect(before).toEqual({ status: 200, length: String(PAGE.length), location: undefined, upstream: ['HEAD'] });
      expect(stored).toEqual(before);
      expect(await answer(never)).toEqual(before);
      expect(await h.index.isLinked('open/x/y', digest)).toBe(false);
    });
  }

  it('a registry refusing blob HEADs (401) but serving the GET is served it once its GET hashed to the digest; then linked', async () => {
    const { layer, digest } = await setUp();
    await storeForPriv(digest, layer);
    ecr!.putBlob('mirror/app', layer);
    const res = await h.request('GET', `/v2/ecr/mirror/app/blobs/${digest}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    expect(ecr!.requests.filter((r) => r.kind === 'blob').map((r) => r.method)).toEqual(['HEAD', 'GET']);
    expect(await h.index.isLinked('ecr/mirror/app', digest)).toBe(true);
    ecr!.reset();
    expect((await h.request('HEAD', `/v2/ecr/mirror/app/blobs/${digest}`)).headers['Content-Length']).toBe(String(layer.length));
    expect(ecr!.count()).toBe(0);
  });

  it('the same registry without the blob: 404 BLOB_UNKNOWN after its GET, nothing linked', async () => {
    const { layer, digest } = await setUp();
    await storeForPriv(digest, layer);
    const res = await h.request('GET', `/v2/ecr/mirror/app/blobs/${digest}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(await h.index.isLinked('ecr/mirror/app', digest)).toBe(false);
  });
});

describe('a registry refusing blob HEADs, on a miss', () => {
  it('a client HEAD is answered from a fill (its GET), not refused', async () => {
    const { layer } = await setUp();
    const digest = ecr!.putBlob('mirror/app', layer);
    const res = await h.request('HEAD', `/v2/ecr/mirror/app/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect(res.headers['Content-Length']).toBe(String(layer.length));
    expect(ecr!.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });
});

describe('a fill started for another name is not waited on before this name has its proof', () => {
  it('in this process: a catch-all upstream is answered 502 while that fill still runs, never served from it', async () => {
    const { layer, digest } = await setUp();
    h.blobs.enableStreamWhileFilling();
    priv.faults.slowBody = { chunkBytes: 64 * 1024, pauseMs: 100 }; // about 1 s of body
    const filling = await h.request('GET', `/v2/priv/team/app/blobs/${digest}`);
    expect(filling.status).toBe(307);
    const res = await h.request('GET', `/v2/open/x/y/blobs/${digest}`);
    expect(res.status).toBe(502);
    expect(res.headers.Location).toBeUndefined();
    // Answered while the other name's fill was still running.
    expect(h.blobs.openInProgress(digest)).toBeDefined();
    expect(await h.blobs.stat(digest)).toBeUndefined();
    await h.blobs.openInProgress(digest)?.whenCommitted();
    expect(h.readLocation(filling.headers.Location).equals(layer)).toBe(true);
    expect(await h.index.isLinked('open/x/y', digest)).toBe(false);
  });

  it('elsewhere (a lease another process holds): an upstream without the blob answers 404 at once, the lease untouched', async () => {
    const { digest } = await setUp({ waitSeconds: 2 });
    expect(await h.index.acquireLease(`blob:${digest}`, 'other-process', 60)).toBe(true);
    const res = await h.request('GET', `/v2/ecr/mirror/app/blobs/${digest}`);
    // Before: the request sat out its wait on that fill, then hopped (307 to itself).
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(ecr!.requests.filter((r) => r.kind === 'blob').map((r) => r.method)).toEqual(['HEAD', 'GET']);
    expect((await h.index.getLease(`blob:${digest}`))?.owner).toBe('other-process');
    expect(await h.blobs.stat(digest)).toBeUndefined();
    expect(priv.count()).toBe(0);
  });
});
