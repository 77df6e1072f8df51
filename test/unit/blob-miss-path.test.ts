/**
 * The blob miss path under API Gateway's time limit: wait up to a deadline, then redirect the client back to
 * itself with a hop counter, then the rule's fallback; fill leases so one download serves every waiter. A
 * slow upstream is the fake's `delayMs` switch (a real registry cannot be made slow on demand).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { Readable } from 'node:stream';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { newLeaseOwner } from '../../shared/registry/fill-lease.js';

/** The owner of a lease another process took for a fill of `p/app` (its fill links that name). */
const OTHER_PROCESS = newLeaseOwner('p/app');

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  h?.close();
  await up?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('blob miss path', () => {
  it('redirects back to the same URL with a hop counter while a slow fill runs, then to the blob', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 0.1, maxHops: 3 } });
    const layer = Buffer.from('slow layer bytes');
    const img = seedImage(up, 'app', 'v1', [layer]);
    up.faults.delayMs = 600;
    const first = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(first.status).toBe(307);
    expect(first.headers.Location).toBe(`/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=1`);
    expect(first.headers['Retry-After']).toBe('1');
    const second = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=1`);
    expect(second.headers.Location).toBe(`/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=2`);
    await sleep(800);
    const third = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=2`);
    expect(third.status).toBe(307);
    expect(third.headers.Location).toMatch(/^\/_blobs\/sha256\//);
    expect(h.readLocation(third.headers.Location).equals(layer)).toBe(true);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('answers 503 UNAVAILABLE with Retry-After past the last hop (rule fallback "unavailable")', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 0.05, maxHops: 2 } });
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    up.faults.delayMs = 500;
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=2`);
    expect(res.status).toBe(503);
    expect(res.headers['Retry-After']).toBe('30');
    expect(h.jsonOf(res).errors[0].code).toBe('UNAVAILABLE');
    await sleep(600); // let the background fill finish before teardown
  });

  it('redirects to the upstream\'s own redirect target past the last hop (rule fallback "upstream-redirect")', async () => {
    up = await startFakeUpstream({ redirectBlobs: true });
    h = await createHarness(
      [{ prefix: 'p', upstream: up.url, missFallback: 'upstream-redirect', insecureRedirectHosts: [] }],
      { blobFill: { waitSeconds: 0.05, maxHops: 0 } },
    );
    // No redirect host allowed: the fill cannot follow the CDN redirect and the fallback has no target → 503.
    const img = seedImage(up, 'app', 'v1', [Buffer.from('cdn bytes')]);
    const refused = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(refused.status).toBe(503);
    h.close();
    h = await createHarness(
      [{ prefix: 'p', upstream: up.url, missFallback: 'upstream-redirect', insecureRedirectHosts: [up.cdnHost!] }],
      { blobFill: { waitSeconds: 0, maxHops: 0 } },
    );
    up.faults.delayMs = 300;
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(res.headers.Location).toBe(`http://${up.cdnHost}/cdn/${img.layerDigests[0]}`);
    await sleep(800);
  });

  it('waits on a fill another process holds the lease for, without downloading it again', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 5 } });
    const layer = Buffer.from('filled elsewhere');
    const img = seedImage(up, 'app', 'v1', [layer]);
    const digest = img.layerDigests[0] as Digest;
    expect(await h.index.acquireLease(`blob:${digest}`, OTHER_PROCESS, 60)).toBe(true);
    const pending = h.request('GET', `/v2/p/app/blobs/${digest}`);
    await sleep(300);
    // The other process's fill, for this name, commits and links it, then releases its lease.
    await h.blobs.write(digest, Readable.from([layer]));
    await h.index.link('p/app', digest);
    await h.index.releaseLease(`blob:${digest}`, OTHER_PROCESS);
    const res = await pending;
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    expect(up.count({ kind: 'blob' })).toBe(0);
  });

  it('takes over the fill once a crashed filler\'s lease expired', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 5 } });
    const layer = Buffer.from('orphaned fill');
    const img = seedImage(up, 'app', 'v1', [layer]);
    expect(await h.index.acquireLease(`blob:${img.layerDigests[0]}`, newLeaseOwner('p/app'), 1)).toBe(true);
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('answers BLOB_UNKNOWN at once when the upstream has no such blob', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 5 } });
    const started = Date.now();
    const res = await h.request('GET', `/v2/p/app/blobs/sha256:${'2'.repeat(64)}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(Date.now() - started).toBeLessThan(4000); // did not sit out the 5 s deadline
    // The lease was released: a later request may try again.
    expect(await h.index.acquireLease(`blob:sha256:${'2'.repeat(64)}`, 'someone', 60)).toBe(true);
  });
});

describe('blob miss path with the fill function (AWS)', () => {
  it('dispatches the fill instead of running it, waits for the commit, and answers 307 once it landed', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 5 }, dispatchFill: { delayMs: 100 } });
    const layer = Buffer.from('filled by the fill function');
    const img = seedImage(up, 'app', 'v1', [layer]);
    const [a, b] = await Promise.all([
      h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`),
      h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`),
    ]);
    expect([a.status, b.status]).toEqual([307, 307]);
    expect(h.readLocation(a.headers.Location).equals(layer)).toBe(true);
    // One dispatch for two concurrent misses (the lease), one upstream download, and the lease released.
    expect(h.fillJobs).toEqual([{ name: 'p/app', digest: img.layerDigests[0], leaseOwner: expect.any(String) }]);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
    expect(await h.index.acquireLease(`blob:${img.layerDigests[0]}`, 'next', 60)).toBe(true);
  });

  it('hops while the fill function is still running', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 0.1, maxHops: 3 }, dispatchFill: { delayMs: 600 } });
    const img = seedImage(up, 'app', 'v1', [Buffer.from('slow fill')]);
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(res.headers.Location).toBe(`/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=1`);
    await sleep(900);
    const after = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=1`);
    expect(after.headers.Location).toMatch(/^\/_blobs\/sha256\//);
    expect(h.fillJobs).toHaveLength(1);
  });

  it('remembers a blob the upstream does not have, briefly', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url, negativeCacheSeconds: 60 }]);
    const ask = async () => expect((await h.request('GET', `/v2/p/app/blobs/sha256:${'3'.repeat(64)}`)).status).toBe(404);
    for (let i = 0; i < 4; i++) await ask();
    expect(up.count({ kind: 'blob' })).toBe(1);
    // Briefly: still remembered just before negativeCacheSeconds, asked again once they passed (registry clock).
    h.clock.now += 59_000;
    await ask();
    expect(up.count({ kind: 'blob' })).toBe(1);
    h.clock.now += 2_000;
    await ask();
    expect(up.count({ kind: 'blob' })).toBe(2);
  });
});
