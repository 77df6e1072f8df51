/**
 * Remembered records (shared/store/remembering-stores.ts): a warm pull answers committed blob sizes, links and
 * manifests by digest from memory, counted at the stores underneath (the harness wraps the real SQLite + file
 * stores as the runtime does); what is remembered is forgotten after its time, at once when this process removes
 * it, and within FORGET_CHECK_MS when another process announced a removal.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { FORGET_CHECK_MS, FORGET_KEY, MAX_REMEMBER_MS, rememberMsFor } from '../../shared/store/remembering-stores.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  await up?.close();
  h?.close();
});

async function setUp() {
  up = await startFakeUpstream();
  const img = seedImage(up, 'team/app', 'v1', [Buffer.from('layer one '.repeat(500)), Buffer.from('layer two '.repeat(700))]);
  h = await createHarness([{ prefix: 'p', upstream: up.url }]);
  const blobs = [img.configDigest, ...img.layerDigests] as Digest[];
  /** One pull as a client makes it: the manifest by tag, then every blob; returns the statuses. */
  const pull = async () => {
    const statuses = [(await h.request('GET', '/v2/p/team/app/manifests/v1')).status];
    for (const d of blobs) {
      const res = await h.request('GET', `/v2/p/team/app/blobs/${d}`);
      statuses.push(res.status);
      if (res.status === 307) h.readLocation(res.headers.Location); // the location serves the bytes
    }
    return statuses;
  };
  /** Reads that reached the stores since the last call, as `port.method` counts. */
  const reads = () => {
    const counts: Record<string, number> = {};
    for (const c of h.storeCalls.splice(0)) {
      if (/^(get|stat|is)/.test(c.method)) counts[`${c.port}.${c.method}`] = (counts[`${c.port}.${c.method}`] ?? 0) + 1;
    }
    return counts;
  };
  return { img, blobs, pull, reads };
}

describe('a warm pull answered from memory', () => {
  it('the second pull reads only the tag (and the removal marker once): no manifest, blob or link reads', async () => {
    const { pull, reads } = await setUp();
    expect(await pull()).toEqual([200, 307, 307, 307]);
    reads();
    h.clock.now += 5_000; // past FORGET_CHECK_MS: the marker is read once
    expect(await pull()).toEqual([200, 307, 307, 307]);
    expect(reads()).toEqual({ 'tags.getTag': 1, 'lifecycle.getLifecycleState': 1 });
    expect(await pull()).toEqual([200, 307, 307, 307]);
    expect(reads()).toEqual({ 'tags.getTag': 1 }); // within FORGET_CHECK_MS of the last marker read
    expect(up.count({ kind: 'blob' })).toBe(3);
  });

  it('forgets after half the grace period at most (capped at 10 min): the stores are read again', async () => {
    const { pull, reads, blobs } = await setUp();
    expect(rememberMsFor(3600)).toBe(MAX_REMEMBER_MS);
    expect(rememberMsFor(1000)).toBe(500_000);
    await pull();
    reads();
    h.clock.now += MAX_REMEMBER_MS + 1;
    await pull();
    expect(reads()).toEqual({
      'tags.getTag': 1, 'manifests.getManifest': 1, 'blobs.stat': blobs.length, 'links.isLinked': blobs.length,
    });
  });

  it('a purge in this process is forgotten at once: the next pull refills from the upstream', async () => {
    const { pull } = await setUp();
    await pull();
    up.reset();
    const report = await h.lifecycle.purge('p/team/app:v1');
    expect(report).toMatchObject({ deletedManifests: 1, deletedBlobs: 3 });
    expect(await pull()).toEqual([200, 307, 307, 307]);
    expect(up.count({ method: 'GET', kind: 'manifest' })).toBe(1);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(3);
  });

  it('a removal another process announced is forgotten within FORGET_CHECK_MS; unannounced, memory answers until its time', async () => {
    const { pull, blobs } = await setUp();
    await pull();
    // Another process (the raw stores underneath) unpublishes the layers without telling anyone.
    for (const d of blobs) expect(await h.blobs.unpublishBlob(d, h.clock.now)).toBe(true);
    up.reset();
    h.clock.now += FORGET_CHECK_MS;
    expect(await pull()).toEqual([200, 307, 307, 307]);
    expect(up.count()).toBe(0); // remembered: served from the unpublished copies, as the grace period allows
    // It announces the removal: the next memory answer after FORGET_CHECK_MS reads the marker and forgets.
    await h.index.putLifecycleState(FORGET_KEY, '{"at":1}');
    h.clock.now += FORGET_CHECK_MS;
    expect(await pull()).toEqual([200, 307, 307, 307]);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(3);
  });

  it('a marker that cannot be read: memory is not used, the stores answer', async () => {
    const { pull, reads, blobs } = await setUp();
    await pull();
    reads();
    const get = h.index.getLifecycleState.bind(h.index);
    h.index.getLifecycleState = async () => {
      throw new Error('ProvisionedThroughputExceededException');
    };
    h.clock.now += FORGET_CHECK_MS;
    try {
      expect(await pull()).toEqual([200, 307, 307, 307]);
    } finally {
      h.index.getLifecycleState = get;
    }
    const r = reads();
    expect(r['blobs.stat']).toBe(blobs.length);
    expect(r['manifests.getManifest']).toBe(1);
  });
});
