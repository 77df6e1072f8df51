/**
 * A proof by the bytes (blob-prove.ts) has the budget of a waiting miss: a blob stored for one rule, pulled through
 * another rule whose upstream's HEAD proves nothing (public.ecr.aws answers every blob HEAD 401; the fake's forced
 * status stands in for it), is proven by that upstream's GET; when the GET outlasts `blobFill.waitSeconds` the
 * request hops (307 to itself), then takes the rule's fallback, while the proof goes on: in this process in the
 * background (a retry joins it), on AWS in the fill function under the proof's lease (run once). A transfer that
 * outlasts the wait is the fake's `holdBlobBody` gate (half the body, the rest when the test says): no timing.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { proveLeaseKey } from '../../shared/registry/blob-prove.js';
import { newLeaseOwner } from '../../shared/registry/fill-lease.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let priv: FakeUpstream;
let ecr: FakeUpstream;
let release: () => void = () => undefined;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  release();
  await priv?.close();
  await ecr?.close();
  await new Promise((r) => setTimeout(r, 50)); // proofs cut off by the close settle before the data dir goes
  h?.close();
});

const NAME = 'ecr/mirror/app';

/** Waits (bounded: 5 s) until `check` holds. */
async function until(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 250 && !(await check()); i++) await new Promise((r) => setTimeout(r, 20));
}

/**
 * `priv` stores a 640 KiB layer (a completed pull); `ecr` has it too, refuses blob HEADs (401) and holds the second
 * half of every blob GET's body until `release()`.
 */
async function setUp(opts: { ecr?: Parameters<typeof startFakeUpstream>[0]; rule?: (ecr: FakeUpstream) => Record<string, unknown>; extra?: Parameters<typeof createHarness>[1] } = {}) {
  priv = await startFakeUpstream();
  ecr = await startFakeUpstream(opts.ecr);
  ecr.faults.status = { kind: 'blob', method: 'HEAD', code: 401 };
  const layer = randomBytes(640 * 1024);
  const digest = seedImage(priv, 'team/app', 'v1', [layer]).layerDigests[0] as Digest;
  ecr.putBlob('mirror/app', layer);
  h = await createHarness(
    [{ prefix: 'priv', upstream: priv.url }, { prefix: 'ecr', upstream: ecr.url, ...opts.rule?.(ecr) }],
    { blobFill: { waitSeconds: 0.05, maxHops: 2 }, ...opts.extra },
  );
  // The pull for `priv` starts the fill (a short wait: answered 307 or, past the last hop, 503; it goes on).
  expect([307, 503]).toContain((await h.request('GET', `/v2/priv/team/app/blobs/${digest}`)).status);
  await until(async () => (await h.blobs.stat(digest)) !== undefined);
  expect(await h.blobs.stat(digest)).toEqual({ size: layer.length });
  h.fillJobs.length = 0;
  ecr.faults.holdBlobBody = { until: new Promise<void>((r) => (release = r)) };
  h.storeCalls.length = 0;
  return { layer, digest };
}

const blobGets = () => ecr.count({ method: 'GET', kind: 'blob' }) + ecr.count({ method: 'GET', kind: 'cdn' });
const linkWrites = () => h.storeCalls.filter((c) => c.port === 'links' && c.method === 'link').length;

describe('in this process: a proof outlasting the wait', () => {
  it('hops while it runs, the retry joins it (one download), the link is written once, then the stored copy is served', async () => {
    const { layer, digest } = await setUp();
    const first = await h.request('GET', `/v2/${NAME}/blobs/${digest}`);
    expect(first.status).toBe(307);
    expect(first.headers.Location).toBe(`/v2/${NAME}/blobs/${digest}?pt-hop=1`);
    const second = await h.request('GET', `/v2/${NAME}/blobs/${digest}?pt-hop=1`);
    expect(second.headers.Location).toBe(`/v2/${NAME}/blobs/${digest}?pt-hop=2`);
    expect(blobGets()).toBe(1); // the retry joined the running download
    expect(await h.index.isLinked(NAME, digest)).toBe(false);
    release();
    await until(() => h.index.isLinked(NAME, digest));
    const third = await h.request('GET', `/v2/${NAME}/blobs/${digest}?pt-hop=2`);
    expect(third.status).toBe(307);
    expect(third.headers.Location).toMatch(/^\/_blobs\/sha256\//);
    expect(h.readLocation(third.headers.Location).equals(layer)).toBe(true);
    expect(blobGets()).toBe(1);
    expect(linkWrites()).toBe(1);
  });

  it('past the last hop: 503 UNAVAILABLE with Retry-After (fallback "unavailable"), nothing served', async () => {
    const { digest } = await setUp();
    const res = await h.request('GET', `/v2/${NAME}/blobs/${digest}?pt-hop=2`);
    expect(res.status).toBe(503);
    expect(res.headers['Retry-After']).toBe('30');
    expect(h.jsonOf(res).errors[0].code).toBe('UNAVAILABLE');
    expect(res.headers.Location).toBeUndefined();
    const head = await h.request('HEAD', `/v2/${NAME}/blobs/${digest}`);
    expect(head.status).toBe(503);
    expect(head.headers['Retry-After']).toBe('10');
    expect(blobGets()).toBe(1); // the HEAD joined the same download
  });

  it('past the last hop with fallback "upstream-redirect": the upstream\'s own URL (its bytes, no leak); once proven, the stored copy', async () => {
    const { layer, digest } = await setUp({
      ecr: { redirectBlobs: true },
      rule: (up) => ({ missFallback: 'upstream-redirect', insecureRedirectHosts: [up.cdnHost!] }),
      extra: { blobFill: { waitSeconds: 0.05, maxHops: 0 } },
    });
    const res = await h.request('GET', `/v2/${NAME}/blobs/${digest}`);
    expect(res.status).toBe(307);
    expect(res.headers.Location).toBe(`http://${ecr.cdnHost}/cdn/${digest}`);
    expect(await h.index.isLinked(NAME, digest)).toBe(false);
    release();
    await until(() => h.index.isLinked(NAME, digest));
    const next = await h.request('GET', `/v2/${NAME}/blobs/${digest}`);
    expect(next.headers.Location).toMatch(/^\/_blobs\/sha256\//);
    expect(h.readLocation(next.headers.Location).equals(layer)).toBe(true);
    expect(ecr.count({ method: 'GET', kind: 'cdn' })).toBe(1);
  });
});

describe('AWS: the proof runs in the fill function', () => {
  it('dispatched once under its lease; the requests hop meanwhile, then see the link and get the stored copy', async () => {
    const { layer, digest } = await setUp({ extra: { blobFill: { waitSeconds: 0.05, maxHops: 2 }, dispatchFill: { delayMs: 0 } } });
    const first = await h.request('GET', `/v2/${NAME}/blobs/${digest}`);
    expect(first.headers.Location).toBe(`/v2/${NAME}/blobs/${digest}?pt-hop=1`);
    const second = await h.request('GET', `/v2/${NAME}/blobs/${digest}?pt-hop=1`);
    expect(second.headers.Location).toBe(`/v2/${NAME}/blobs/${digest}?pt-hop=2`);
    expect(h.fillJobs.map((j) => [j.mode, j.name, j.digest])).toEqual([['prove', NAME, digest]]);
    expect(blobGets()).toBe(1);
    release();
    await until(async () => (await h.index.isLinked(NAME, digest)) && !(await h.index.getLease(proveLeaseKey(NAME, digest))));
    const third = await h.request('GET', `/v2/${NAME}/blobs/${digest}?pt-hop=2`);
    expect(third.headers.Location).toMatch(/^\/_blobs\/sha256\//);
    expect(h.readLocation(third.headers.Location).equals(layer)).toBe(true);
    expect(h.fillJobs).toHaveLength(1);
    expect(blobGets()).toBe(1);
    expect(linkWrites()).toBe(1);
  });

  it('other bytes: the fill function links nothing, and the request gets 502 DIGEST_INVALID (its own check of the verdict)', async () => {
    const { digest } = await setUp({ extra: { blobFill: { waitSeconds: 5 }, dispatchFill: { delayMs: 0 } } });
    release();
    ecr.faults.wrongBytes = 'blobs';
    const res = await h.request('GET', `/v2/${NAME}/blobs/${digest}`);
    expect(res.status).toBe(502);
    expect(h.jsonOf(res).errors[0].code).toBe('DIGEST_INVALID');
    expect(res.headers.Location).toBeUndefined();
    expect(h.fillJobs.map((j) => j.mode)).toEqual(['prove']);
    expect(ecr.count({ method: 'GET', kind: 'blob' })).toBe(2); // the fill function's, then the request's
    expect(await h.index.isLinked(NAME, digest)).toBe(false);
    expect(await h.index.getLease(proveLeaseKey(NAME, digest))).toBeUndefined();
  });
});

describe("the fill function's prove job (BlobService.prove)", () => {
  it('links the name when its upstream\'s bytes match, and releases the lease', async () => {
    const { digest } = await setUp();
    release();
    const owner = newLeaseOwner(NAME);
    expect(await h.index.acquireLease(proveLeaseKey(NAME, digest), owner, 60)).toBe(true);
    expect(await h.blobService.prove(NAME, digest, owner)).toBe('linked');
    expect(await h.index.isLinked(NAME, digest)).toBe(true);
    expect(await h.index.getLease(proveLeaseKey(NAME, digest))).toBeUndefined();
    expect(blobGets()).toBe(1);
  });

  it('other bytes: DIGEST_INVALID, nothing linked, the lease released', async () => {
    const { digest } = await setUp();
    release();
    ecr.faults.wrongBytes = 'blobs';
    const owner = newLeaseOwner(NAME);
    expect(await h.index.acquireLease(proveLeaseKey(NAME, digest), owner, 60)).toBe(true);
    await expect(h.blobService.prove(NAME, digest, owner)).rejects.toMatchObject({ code: 'DIGEST_INVALID', status: 502 });
    expect(await h.index.isLinked(NAME, digest)).toBe(false);
    expect(await h.index.getLease(proveLeaseKey(NAME, digest))).toBeUndefined();
    expect(linkWrites()).toBe(0);
  });

  it('a job whose lease was taken over does nothing', async () => {
    const { digest } = await setUp();
    expect(await h.index.acquireLease(proveLeaseKey(NAME, digest), newLeaseOwner(NAME), 60)).toBe(true);
    expect(await h.blobService.prove(NAME, digest, newLeaseOwner(NAME))).toBe('superseded');
    expect(blobGets()).toBe(0);
    expect(await h.index.isLinked(NAME, digest)).toBe(false);
  });
});
