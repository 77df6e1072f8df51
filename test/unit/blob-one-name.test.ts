/**
 * One name, one upstream: a blob is served under a name only when that name's own upstream confirmed the digest,
 * or the digest is linked to that name — whether the blob is committed, being filled in this process (streamed or
 * not), filled elsewhere, or filled by the fill function (AWS). Two rules: `slowpriv` → an upstream that has the
 * blob and sends it slowly (the fake's `slowBody` switch: a real registry cannot be made slow on demand), `fake`
 * → an upstream that does not have it. `fake` must get 404 BLOB_UNKNOWN, never the blob's location.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { hashPassword } from '../../shared/auth/passwords.js';
import type { Digest } from '../../shared/oci/digest.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let priv: FakeUpstream;
let other: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  await priv?.close();
  await other?.close();
  await new Promise((r) => setTimeout(r, 50)); // fills cut off by the close settle before the data dir goes
  h?.close();
});

const KiB = 1024;

/** Waits (bounded: 5 s) until `check` holds. */
async function until(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 250 && !(await check()); i++) await new Promise((r) => setTimeout(r, 20));
}

/** Two rules over two upstreams; `slowpriv` has a 640 KiB layer it sends in about 1 s. */
async function setUp(extra: Parameters<typeof createHarness>[1] = {}) {
  priv = await startFakeUpstream();
  other = await startFakeUpstream();
  const layer = randomBytes(640 * KiB);
  const img = seedImage(priv, 'team/app', 'v1', [layer]);
  seedImage(other, 'x/y', 'v1', [Buffer.from('an unrelated layer')]);
  h = await createHarness(
    [
      { prefix: 'slowpriv', upstream: priv.url },
      { prefix: 'fake', upstream: other.url },
    ],
    { blobFill: { waitSeconds: 5 }, ...extra },
  );
  priv.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 100 };
  return { layer, digest: img.layerDigests[0] as Digest };
}

const expectBlobUnknown = (res: { status: number; headers: Record<string, string> }, json: () => { errors: Array<{ code: string }> }) => {
  expect(res.headers.Location).toBeUndefined();
  expect(res.status).toBe(404);
  expect(json().errors[0].code).toBe('BLOB_UNKNOWN');
};

describe('a blob being filled for one name is not served under another', () => {
  it('stream while filling: the other name gets 404 BLOB_UNKNOWN (its upstream was asked), the filling name the bytes', async () => {
    const { layer, digest } = await setUp();
    h.blobs.enableStreamWhileFilling();
    const first = await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`);
    expect(first.status).toBe(307);
    expect(h.blobs.openInProgress(digest)).toBeDefined(); // still filling
    const leak = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expectBlobUnknown(leak, () => h.jsonOf(leak));
    expect(other.requests.filter((r) => r.kind === 'blob').map((r) => `${r.method} ${r.path}`)).toEqual([`HEAD /v2/x/y/blobs/${digest}`]);
    const head = await h.request('HEAD', `/v2/fake/x/y/blobs/${digest}`);
    expect(head.status).toBe(404);
    // The filling name is served; one upstream download in all.
    await h.blobs.openInProgress(digest)?.whenCommitted();
    expect(h.readLocation(first.headers.Location).equals(layer)).toBe(true);
    expect(priv.count({ method: 'GET', kind: 'blob' })).toBe(1);
    const after = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expect(after.status).toBe(404);
    expect(await h.index.isLinked('fake/x/y', digest)).toBe(false);
  });

  it('a second request for the same name joins the fill without asking the upstream again', async () => {
    const { digest } = await setUp();
    h.blobs.enableStreamWhileFilling();
    const [a, b] = await Promise.all([
      h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`),
      h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`),
    ]);
    expect([a.status, b.status]).toEqual([307, 307]);
    expect(priv.requests.filter((r) => r.kind === 'blob').map((r) => r.method)).toEqual(['GET']);
  });

  it('another name whose upstream has the digest too is served from the same fill, after its own HEAD', async () => {
    const { layer, digest } = await setUp();
    other.putBlob('x/y', layer);
    h.blobs.enableStreamWhileFilling();
    expect((await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`)).status).toBe(307);
    const second = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expect(second.status).toBe(307);
    expect(second.headers.Location).toMatch(/^\/_blobs\/sha256\//);
    expect(other.requests.filter((r) => r.kind === 'blob').map((r) => r.method)).toEqual(['HEAD']);
    expect(priv.count({ method: 'GET', kind: 'blob' }) + other.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('waiting for the commit of a fill in this process (no streaming): 404 for the other name', async () => {
    const { digest } = await setUp();
    const filling = h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`);
    await until(async () => priv.count({ method: 'GET', kind: 'blob' }) === 1);
    const leak = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expectBlobUnknown(leak, () => h.jsonOf(leak));
    expect((await filling).status).toBe(307);
  });

  it('another name does not inherit the failure of a fill started for a different upstream: it fills from its own', async () => {
    const { layer, digest } = await setUp();
    other.putBlob('x/y', layer);
    priv.faults.wrongBytes = true; // slowpriv's upstream sends bytes that do not match the digest
    const failing = h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`);
    await until(async () => priv.count({ method: 'GET', kind: 'blob' }) === 1);
    const res = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    expect(other.requests.filter((r) => r.kind === 'blob').map((r) => r.method)).toEqual(['HEAD', 'GET']);
    const failed = await failing;
    expect(failed.status).toBe(502);
    expect(h.jsonOf(failed).errors[0].code).toBe('DIGEST_INVALID');
  });

  it('a fill held by another process: the waiter of the other name gets 404 once it committed', async () => {
    const { layer, digest } = await setUp();
    priv.faults.slowBody = undefined;
    expect(await h.index.acquireLease(`blob:${digest}`, 'other-process', 60)).toBe(true);
    const waiting = h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    await new Promise((r) => setTimeout(r, 300));
    await h.blobs.write(digest, Readable.from([layer]));
    await h.index.releaseLease(`blob:${digest}`, 'other-process');
    const res = await waiting;
    expectBlobUnknown(res, () => h.jsonOf(res));
  });

  it('AWS: the fill function links only the name whose upstream it read, not one it found already stored', async () => {
    const { layer, digest } = await setUp({ dispatchFill: { delayMs: 50 } });
    priv.faults.slowBody = undefined;
    // The blob was committed for slowpriv while a fill dispatched for fake was on its way: that fill must not
    // link fake (its upstream never confirmed the digest).
    await h.blobs.write(digest, Readable.from([layer]));
    expect(await h.index.acquireLease(`blob:${digest}`, 'dispatcher', 60)).toBe(true);
    await h.blobService.fill('fake/x/y', digest, 'dispatcher');
    expect(await h.index.isLinked('fake/x/y', digest)).toBe(false);
    const res = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expectBlobUnknown(res, () => h.jsonOf(res));
    expect((await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`)).status).toBe(307);
  });

  it('AWS: a request for the other name while the fill function fills for slowpriv gets 404', async () => {
    const { digest } = await setUp({ dispatchFill: { delayMs: 0 } });
    const filling = h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`);
    await until(async () => priv.count({ method: 'GET', kind: 'blob' }) === 1);
    const leak = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expectBlobUnknown(leak, () => h.jsonOf(leak));
    expect((await filling).status).toBe(307);
    expect(h.fillJobs.map((j) => j.name)).toEqual(['slowpriv/team/app']);
  });
});

describe('with client auth: alice (fake only) cannot read bob\'s private layer while bob pulls it', () => {
  it('bob gets the layer, alice gets 404 BLOB_UNKNOWN during and after the fill', async () => {
    const FAST = { N: 2 ** 10, r: 8, p: 1 };
    const users = [
      { username: 'alice', passwordHash: await hashPassword('alice-pw-0123456789', FAST), prefixes: ['fake'] },
      { username: 'bob', passwordHash: await hashPassword('bob-pw-0123456789', FAST), prefixes: ['slowpriv'] },
    ];
    const { digest } = await setUp({ auth: { mode: 'token', users } });
    h.blobs.enableStreamWhileFilling();
    const token = async (user: string, pw: string, scope: string) => {
      const q = new URLSearchParams({ service: 'cache.test', account: user, scope });
      const res = await h.request('GET', `/token?${q}`, { host: 'cache.test', authorization: `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}` });
      expect(res.status).toBe(200);
      return { host: 'cache.test', authorization: `Bearer ${h.jsonOf(res).token}` };
    };
    const bob = await token('bob', 'bob-pw-0123456789', 'repository:slowpriv/team/app:pull');
    const alice = await token('alice', 'alice-pw-0123456789', 'repository:fake/x/y:pull');
    const bobs = await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`, bob);
    expect(bobs.status).toBe(307);
    const alices = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`, alice);
    expectBlobUnknown(alices, () => h.jsonOf(alices));
    // And alice cannot ask for bob's repository at all.
    expect((await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`, alice)).status).toBe(403);
  });
});

/**
 * A manifest's upstream vouches for the manifest, not for the blobs it names: rule `fake`'s upstream serves a
 * manifest naming the digest of a blob cached for `slowpriv` (private to that upstream). Storing that manifest must
 * not make the blob servable under `fake`'s name: only `fake`'s own upstream can confirm it (one HEAD), and a name
 * whose fill committed the blob links it as before.
 */
describe('a manifest referencing a blob is no confirmation for serving it', () => {
  /** A manifest on `fake`'s upstream (`x/y:evil`) naming `digest`, which that upstream does not have. */
  function serveManifestNaming(digest: Digest, size: number) {
    const mediaType = 'application/vnd.oci.image.manifest.v1+json';
    const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
    const body = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: other.putBlob('x/y', config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size }],
    }));
    other.putManifest('x/y', 'evil', { body, contentType: mediaType });
  }

  for (const mode of ['fill in this process', 'fill function (AWS)'] as const) {
    it(`${mode}: the other rule's name gets 404 BLOB_UNKNOWN after one HEAD to its own upstream, GET and HEAD alike`, async () => {
      const { layer, digest } = await setUp(mode === 'fill function (AWS)' ? { dispatchFill: { delayMs: 0 } } : {});
      priv.faults.slowBody = undefined;
      const filled = await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`);
      expect(filled.status).toBe(307);
      expect(h.readLocation(filled.headers.Location).equals(layer)).toBe(true);
      serveManifestNaming(digest, layer.length);
      expect((await h.request('GET', '/v2/fake/x/y/manifests/evil')).status).toBe(200);
      expect(await h.index.isLinked('fake/x/y', digest)).toBe(false);
      other.reset();
      const leak = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
      expectBlobUnknown(leak, () => h.jsonOf(leak));
      expect(other.requests.map((r) => `${r.method} ${r.path}`)).toEqual([`HEAD /v2/x/y/blobs/${digest}`]);
      expect((await h.request('HEAD', `/v2/fake/x/y/blobs/${digest}`)).status).toBe(404);
      expect(await h.index.isLinked('fake/x/y', digest)).toBe(false);
      // The name that filled it is linked and served without asking its upstream again.
      priv.reset();
      expect((await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`)).status).toBe(307);
      expect(priv.count()).toBe(0);
    });
  }

  it('a name whose upstream confirms the digest (one HEAD) is served the stored blob, then linked: the next GET asks nobody', async () => {
    const { layer, digest } = await setUp();
    priv.faults.slowBody = undefined;
    expect((await h.request('GET', `/v2/slowpriv/team/app/blobs/${digest}`)).status).toBe(307);
    other.putBlob('x/y', layer);
    serveManifestNaming(digest, layer.length);
    expect((await h.request('GET', '/v2/fake/x/y/manifests/evil')).status).toBe(200);
    other.reset();
    const first = await h.request('GET', `/v2/fake/x/y/blobs/${digest}`);
    expect(first.status).toBe(307);
    expect(h.readLocation(first.headers.Location).equals(layer)).toBe(true);
    expect(other.requests.map((r) => `${r.method} ${r.path}`)).toEqual([`HEAD /v2/x/y/blobs/${digest}`]);
    expect(await h.index.isLinked('fake/x/y', digest)).toBe(true);
    other.reset();
    expect((await h.request('GET', `/v2/fake/x/y/blobs/${digest}`)).status).toBe(307);
    expect(other.count()).toBe(0);
    expect(priv.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });
});
