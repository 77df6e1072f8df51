/**
 * What a blob miss answers besides waiting: `missMode: redirect` (a 307 to the upstream's own CDN URL at once, the
 * fill in the background; `wait` when the upstream serves blobs itself), and the layers of the image being pulled
 * filled ahead of the client's requests (shared/registry/pull-hints.ts). The fake upstream stands in for a
 * registry whose blob GETs redirect to a CDN (its `redirectBlobs` switch) and for a slow one (`slowBody`), which
 * the real registry cannot be made to be on demand.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { inScope, newScope } from '../../shared/observe/request-scope.js';
import { fillLeaseKey } from '../../shared/registry/fill-lease.js';
import { createHarness } from '../support/harness.js';
import { eventually } from '../support/eventually.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  await up?.close();
  await new Promise((r) => setTimeout(r, 50)); // background fills cut off by the close settle first
  h?.close();
});

const layers = () => [1, 2, 3, 4].map((i) => Buffer.alloc(96 * 1024 + i, `layer ${i} `));
const blobGets = () => up.requests.filter((r) => r.method === 'GET' && r.kind === 'blob').map((r) => r.path.split('/').pop());

describe('missMode: redirect', () => {
  for (const dispatch of [false, true]) {
    it(`${dispatch ? 'fill function (AWS)' : 'fill in this process'}: the first GET gets the upstream's CDN URL, the fill stores the blob, the next GET is a hit`, async () => {
      up = await startFakeUpstream({ redirectBlobs: true });
      h = await createHarness(
        [{ prefix: 'p', upstream: up.url, missMode: 'redirect', insecureRedirectHosts: [up.cdnHost!] }],
        dispatch ? { dispatchFill: { delayMs: 0 } } : {},
      );
      const img = seedImage(up, 'app', 'v1', [Buffer.from('bytes from the CDN')]);
      const digest = img.layerDigests[0] as Digest;
      const first = await h.request('GET', `/v2/p/app/blobs/${digest}`);
      expect(first.status).toBe(307);
      expect(first.headers.Location).toBe(`http://${up.cdnHost}/cdn/${digest}`);
      await eventually(async () => (await h.blobs.stat(digest)) !== undefined);
      // The fill ends (links the blob to the name, then releases its lease) just after the blob is committed.
      await eventually(async () => h.storeCalls.some((c) => c.method === 'releaseLease'));
      expect(h.fillJobs.map((j) => j.digest)).toEqual(dispatch ? [digest] : []);
      up.reset();
      const next = await h.request('GET', `/v2/p/app/blobs/${digest}`);
      expect(next.status).toBe(307);
      expect(next.headers.Location).toMatch(/^\/_blobs\/sha256\//);
      expect(h.readLocation(next.headers.Location).toString()).toBe('bytes from the CDN');
      expect(up.count()).toBe(0);
    });
  }

  it('an upstream that serves blobs itself (no CDN URL): the request waits as in missMode wait, and is served the stored blob', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url, missMode: 'redirect' }]);
    const img = seedImage(up, 'app', 'v1', [Buffer.from('served by the upstream itself')]);
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(res.headers.Location).toMatch(/^\/_blobs\/sha256\//);
    expect(h.readLocation(res.headers.Location).toString()).toBe('served by the upstream itself');
  });

  it('a layer miss answered with the CDN URL fills that layer only: nothing is filled ahead of the pull\'s GETs', async () => {
    up = await startFakeUpstream({ redirectBlobs: true });
    h = await createHarness([{ prefix: 'p', upstream: up.url, missMode: 'redirect', insecureRedirectHosts: [up.cdnHost!] }]);
    const img = seedImage(up, 'app', 'v1', layers());
    const [l1, l2, l3, l4] = img.layerDigests as Digest[];
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(200);
    const first = await h.request('GET', `/v2/p/app/blobs/${l1}`);
    expect(first.headers.Location).toBe(`http://${up.cdnHost}/cdn/${l1}`);
    await eventually(async () => (await h.blobs.stat(l1)) !== undefined);
    await new Promise((r) => setTimeout(r, 200)); // fill-ahead.ts would have started the others by now
    for (const d of [l2, l3, l4]) expect(await h.blobs.stat(d)).toBeUndefined();
    expect(h.storeCalls.filter((c) => c.method === 'acquireLease').length).toBe(1);
  });

  it('a blob the upstream does not have: 404 BLOB_UNKNOWN, no fill', async () => {
    up = await startFakeUpstream({ redirectBlobs: true });
    h = await createHarness([{ prefix: 'p', upstream: up.url, missMode: 'redirect', insecureRedirectHosts: [up.cdnHost!] }]);
    seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const res = await h.request('GET', `/v2/p/app/blobs/sha256:${'0'.repeat(64)}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(h.storeCalls.filter((c) => c.method === 'acquireLease')).toEqual([]);
  });
});

describe('the layers of an image being pulled are filled ahead', () => {
  it('a layer miss starts the next layers\' fills; the client\'s later GETs join them (one upstream GET per layer)', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const img = seedImage(up, 'app', 'v1', layers());
    const [l1, l2, l3, l4] = img.layerDigests;
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(200);
    expect((await h.request('GET', `/v2/p/app/blobs/${img.configDigest}`)).status).toBe(307);
    expect(blobGets()).toEqual([img.configDigest]); // the config blob (what `skopeo inspect` reads) fills nothing more
    up.faults.slowBody = { chunkBytes: 16 * 1024, pauseMs: 20 };
    expect((await h.request('GET', `/v2/p/app/blobs/${l1}`)).status).toBe(307);
    // Fills in this process start ahead from a queue, while the process has time to spare (fill-ahead.ts): the
    // slow upstream leaves it idle, so all start without the client asking.
    await eventually(() => new Set(blobGets()).size === 5);
    expect(new Set(blobGets())).toEqual(new Set([img.configDigest, l1, l2, l3, l4]));
    for (const [i, d] of [l2, l3, l4].entries()) {
      const res = await h.request('GET', `/v2/p/app/blobs/${d}`);
      expect(res.status).toBe(307);
      await eventually(async () => (await h.blobs.stat(d as Digest)) !== undefined);
      expect(h.readLocation(res.headers.Location).equals(layers()[i + 1])).toBe(true);
    }
    expect(blobGets().length).toBe(5);
  });

  it('a layer filled ahead and asked for while it fills: that GET is the pull\'s miss, the next pull\'s GET a hit', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const img = seedImage(up, 'app', 'v1', layers().slice(0, 2));
    const [l1, l2] = img.layerDigests as Digest[];
    const cacheOf = async (path: string) => {
      const scope = newScope();
      expect((await inScope(scope, () => h.request('GET', path))).status).toBe(307);
      return scope.cache;
    };
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(200);
    up.faults.slowBody = { chunkBytes: 16 * 1024, pauseMs: 20 };
    expect(await cacheOf(`/v2/p/app/blobs/${l1}`)).toBe('miss');
    await eventually(() => blobGets().includes(l2)); // l2's fill, started ahead, is running
    expect(await h.blobs.stat(l2)).toBeUndefined();
    expect(await cacheOf(`/v2/p/app/blobs/${l2}`)).toBe('miss'); // joins that fill
    await eventually(async () => (await h.blobs.stat(l2)) !== undefined && (await h.index.isLinked('p/app', l2)));
    expect(await cacheOf(`/v2/p/app/blobs/${l2}`)).toBe('hit');
    expect(blobGets().filter((d) => d === l2)).toHaveLength(1);
  });

  it('a layer filled ahead that committed before the client asks: its GET answers once that fill ended (linked, lease released), no upstream request', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const img = seedImage(up, 'app', 'v1', layers().slice(0, 2));
    const [l1, l2] = img.layerDigests as Digest[];
    // The fill of l2 (started ahead by l1's miss) is held between its commit and its link: the window a client's GET
    // of l2 lands in on a loaded machine. It goes on when that GET asks for the link, or once the GET has done all
    // it does without waiting (setImmediate: after its promise callbacks).
    let committed!: () => void;
    const linking = new Promise<void>((r) => (committed = r));
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const { link, isLinked } = { link: h.index.link.bind(h.index), isLinked: h.index.isLinked.bind(h.index) };
    h.index.link = async (name, digest) => {
      if (digest === l2) {
        committed();
        await released;
      }
      return link(name, digest);
    };
    h.index.isLinked = async (name, digest) => {
      const linked = await isLinked(name, digest);
      if (digest === l2) release();
      return linked;
    };
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(200);
    expect((await h.request('GET', `/v2/p/app/blobs/${l1}`)).status).toBe(307);
    await linking;
    up.reset();
    const answer = h.request('GET', `/v2/p/app/blobs/${l2}`);
    setImmediate(release);
    const res = await answer;
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layers()[1])).toBe(true);
    expect(up.count()).toBe(0); // before: a HEAD, to prove for the name what its own fill was about to link
    expect(await isLinked('p/app', l2)).toBe(true);
    expect(await h.index.getLease(fillLeaseKey(l2))).toBeUndefined();
  });

  it('a manifest GET alone fills nothing; another name\'s layer miss fills nothing of this name\'s image', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const img = seedImage(up, 'app', 'v1', layers());
    seedImage(up, 'other', 'v1', layers());
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(200);
    await new Promise((r) => setTimeout(r, 100));
    expect(blobGets()).toEqual([]);
    expect((await h.request('GET', `/v2/p/other/blobs/${img.layerDigests[0]}`)).status).toBe(307);
    await new Promise((r) => setTimeout(r, 100));
    expect(blobGets()).toEqual([img.layerDigests[0]]);
  });
});
