/**
 * The lifecycle on the embedded stores (SQLite + files), against an in-process fake upstream that counts requests
 * (and can be switched off: "the upstream stopped"), with an injected clock: last-pulled times, purge, GC,
 * budgets, expiry, verify, and GC passes racing pulls and fills.
 */
import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { blobStates, pullImage, storeProblems } from '../support/lifecycle-checks.js';

const HOUR = 3600 * 1000;
const DAY = 24 * HOUR;
let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
const layer = (label: string, size = 20_000) => Buffer.alloc(size, label);

async function open(lifecycle: unknown = {}, rule: Record<string, unknown> = {}) {
  h = await createHarness([{ prefix: 'local', upstream: up.url, ttlSeconds: 30 * 24 * 3600, ...rule }], { lifecycle });
}

beforeEach(async () => {
  up = await startFakeUpstream();
});
afterEach(async () => {
  h?.close();
  await up.close();
});

describe('last-pulled times', () => {
  it('a warm pull writes nothing within the touch interval: 0 extra writes in 1,000 pulls, then one per item', async () => {
    await open({ touchIntervalSeconds: 3600 });
    const img = seedImage(up, 'app', 'v1', [layer('a')]);
    await pullImage(h, 'local/app', 'v1');
    const tagWrites = vi.spyOn(h.index, 'recordTagPull');
    const manifestWrites = vi.spyOn(h.index, 'recordManifestPull');
    for (let i = 0; i < 500; i++) {
      h.clock.now += 7_000; // 500 × 7 s < 1 h
      expect((await h.request('GET', '/v2/local/app/manifests/v1')).status).toBe(200);
      expect((await h.request('HEAD', `/v2/local/app/manifests/${img.digest}`)).status).toBe(200);
    }
    expect(tagWrites).toHaveBeenCalledTimes(0);
    expect(manifestWrites).toHaveBeenCalledTimes(0);
    h.clock.now += HOUR;
    for (let i = 0; i < 10; i++) {
      await h.request('GET', '/v2/local/app/manifests/v1');
      await h.request('GET', `/v2/local/app/manifests/${img.digest}`);
    }
    expect(tagWrites).toHaveBeenCalledTimes(1);
    expect(manifestWrites).toHaveBeenCalledTimes(1);
    expect((await h.index.getTag('local/app', 'v1'))?.pulledAt).toBe(h.clock.now);
    expect((await h.index.getManifest('local/app', img.digest as never))?.pulledAt).toBe(h.clock.now);
  });
});

describe('purge and garbage collection', () => {
  it('purging one of two repositories sharing a layer: GC removes its own blobs from disk, the other image stays pullable offline', async () => {
    await open();
    const shared = layer('s', 50_000);
    const a = seedImage(up, 'a', 'v1', [shared, layer('x')]);
    const b = seedImage(up, 'b', 'v1', [shared, layer('y')]);
    await pullImage(h, 'local/a', 'v1');
    await pullImage(h, 'local/b', 'v1');
    const aOnly = [a.configDigest, a.layerDigests[1]];
    const purged = await h.lifecycle.purge('local/a');
    expect(purged).toMatchObject({ repositories: 1, evictedTags: 1, deletedManifests: 1, deletedBlobs: 2 });
    expect(await blobStates(h.blobs, aOnly)).toEqual(['unpublished', 'unpublished']);
    expect(await blobStates(h.blobs, [a.layerDigests[0]])).toEqual(['committed']);
    // Within the grace period the bytes stay (URLs handed out before still work); after it a pass removes them.
    expect((await h.lifecycle.gc()).removedObjects).toBe(0);
    h.clock.now += 2 * HOUR;
    const report = await h.lifecycle.gc();
    expect(report).toMatchObject({ complete: true, removedObjects: 2, evictedTags: 0, deletedManifests: 0, deletedBlobs: 0 });
    for (const d of aOnly) {
      expect(existsSync(h.blobs.pathOf(d as never))).toBe(false);
      expect(existsSync(h.blobs.trashPathOf(d as never))).toBe(false);
    }
    expect(await blobStates(h.blobs, [a.layerDigests[0], b.configDigest, b.layerDigests[1]])).toEqual(['committed', 'committed', 'committed']);
    expect(report.storedBytes).toBe(shared.length + 20_000 + b.config.length + b.body.length);
    up.faults.down = true;
    await pullImage(h, 'local/b', 'v1');
    expect((await h.request('GET', '/v2/local/a/manifests/v1')).status).toBe(503);
    expect(await storeProblems(h.index, h.blobs)).toEqual([]);
    // Upstream back: the purged image is an ordinary miss and refills.
    up.faults.down = false;
    up.reset();
    await pullImage(h, 'local/a', 'v1');
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(2);
  });

  it('purges a tag (its manifest goes unless another tag points at it), a digest, and a whole rule', async () => {
    await open();
    const img = seedImage(up, 'app', 'v1', [layer('p')]);
    up.putManifest('app', 'also', { body: img.body, contentType: img.mediaType });
    const other = seedImage(up, 'other', 'v1', [layer('q')]);
    await pullImage(h, 'local/app', 'v1');
    await pullImage(h, 'local/app', 'also');
    await pullImage(h, 'local/other', 'v1');
    expect(await h.lifecycle.purge('local/app:v1')).toMatchObject({ evictedTags: 1, deletedManifests: 0, deletedBlobs: 0 });
    expect(await h.lifecycle.purge(`local/app@${img.digest}`)).toMatchObject({ evictedTags: 1, deletedManifests: 1, deletedBlobs: 2 });
    expect(await h.index.listRepositories()).toEqual(['local/other']);
    expect(await h.lifecycle.purge('local')).toMatchObject({ repositories: 1, evictedTags: 1, deletedManifests: 1, deletedBlobs: 2 });
    expect(await blobStates(h.blobs, [other.configDigest, ...other.layerDigests])).toEqual(['unpublished', 'unpublished']);
    expect(await h.index.listRepositories()).toEqual([]);
    expect(await h.lifecycle.purge('local/nothing')).toMatchObject({ repositories: 0 });
  });
});

describe('budgets and expiry', () => {
  /** Pulls three images 2 h apart (a, b, c), then a again: b is the least recently pulled. */
  async function pullThree(tags: { a?: string; b?: string; c?: string } = {}) {
    const imgs = { a: seedImage(up, 'a', tags.a ?? 'v1', [layer('a')]), b: seedImage(up, 'b', tags.b ?? 'v1', [layer('b')]), c: seedImage(up, 'c', tags.c ?? 'v1', [layer('c')]) };
    for (const k of ['a', 'b', 'c', 'a'] as const) {
      await pullImage(h, `local/${k}`, tags[k] ?? 'v1');
      h.clock.now += 2 * HOUR + 1000;
    }
    return imgs;
  }
  const bytesOf = (img: ReturnType<typeof seedImage>) => img.body.length + img.config.length + 20_000;

  it('a budget that fits two of three images evicts the least recently pulled one', async () => {
    await open({}, { lifecycle: { maxBytes: 50_000 } });
    const imgs = await pullThree();
    const report = await h.lifecycle.gc();
    expect(report).toMatchObject({ complete: true, evictedTags: 1, deletedManifests: 1, deletedBlobs: 2, overBudget: [] });
    expect(report.freedBytes).toBe(bytesOf(imgs.b));
    expect(report.storedBytes).toBe(bytesOf(imgs.a) + bytesOf(imgs.c));
    expect(report.rules.local).toEqual({ storedBytes: bytesOf(imgs.a) + bytesOf(imgs.c), maxBytes: 50_000 });
    expect(await h.index.getTag('local/b', 'v1')).toBeUndefined();
    expect(await blobStates(h.blobs, [imgs.b.configDigest, ...imgs.b.layerDigests])).toEqual(['unpublished', 'unpublished']);
    up.faults.down = true;
    await pullImage(h, 'local/a', 'v1');
    await pullImage(h, 'local/c', 'v1');
    // A second pass finds the budget met: nothing more goes.
    expect(await h.lifecycle.gc()).toMatchObject({ evictedTags: 0, deletedManifests: 0, deletedBlobs: 0 });
  });

  it('never evicts a keepTags match: the next least recently pulled goes, and kept content over a budget is reported', async () => {
    await open({}, { lifecycle: { maxBytes: 50_000, keepTags: '^v[0-9.]+$' } });
    const imgs = await pullThree({ a: 'latest', b: 'v1.0.0', c: 'edge' });
    const report = await h.lifecycle.gc();
    expect(report).toMatchObject({ evictedTags: 1, overBudget: [] });
    expect(await h.index.getTag('local/b', 'v1.0.0')).toBeDefined();
    expect(await h.index.getTag('local/c', 'edge')).toBeUndefined();
    expect(report.storedBytes).toBe(bytesOf(imgs.a) + bytesOf(imgs.b));

    const tight = await createHarness([{ prefix: 'local', upstream: up.url, lifecycle: { maxBytes: 1000, keepTags: '.*' } }], {});
    try {
      await pullImage(tight, 'local/a', 'latest');
      tight.clock.now += DAY;
      const over = await tight.lifecycle.gc();
      expect(over.evictedTags).toBe(0);
      expect(over.overBudget).toEqual([{ scope: 'local', storedBytes: bytesOf(imgs.a), maxBytes: 1000 }]);
    } finally {
      tight.close();
    }
  });

  it('the cache-wide maxBytes evicts across rules', async () => {
    const img = seedImage(up, 'app', 'v1', [layer('m')]);
    // Both copies of the manifest do not fit, one does.
    h = await createHarness([{ prefix: 'local', upstream: up.url }, { prefix: 'mirror', upstream: up.url }], { lifecycle: { maxBytes: bytesOf(img) + 10 } });
    await pullImage(h, 'local/app', 'v1');
    h.clock.now += 3 * HOUR;
    await pullImage(h, 'mirror/app', 'v1');
    h.clock.now += 3 * HOUR;
    const report = await h.lifecycle.gc();
    // Evicting local/app frees only its manifest: the blobs are shared with mirror/app, which keeps them.
    expect(report).toMatchObject({ evictedTags: 1, deletedManifests: 1, deletedBlobs: 0, overBudget: [] });
    expect(await h.index.getTag('local/app', 'v1')).toBeUndefined();
    expect(report.storedBytes).toBe(bytesOf(img));
  });

  it('evicts a tag not pulled for expireAfterUnpulledDays, with its manifest and blobs; keepTags and recent pulls stay', async () => {
    await open({ expireAfterUnpulledDays: 1 }, { lifecycle: { keepTags: '^stable$' } });
    const old = seedImage(up, 'app', 'v1', [layer('o')]);
    seedImage(up, 'app', 'stable', [layer('k')]);
    const fresh = seedImage(up, 'fresh', 'v1', [layer('f')]);
    await pullImage(h, 'local/app', 'v1');
    await pullImage(h, 'local/app', 'stable');
    h.clock.now += 2 * DAY;
    await pullImage(h, 'local/fresh', 'v1');
    const report = await h.lifecycle.gc();
    expect(report).toMatchObject({ evictedTags: 1, deletedManifests: 1, deletedBlobs: 2 });
    expect(await h.index.listTags('local/app')).toEqual(['stable']);
    expect(await h.index.getManifest('local/app', old.digest as never)).toBeUndefined();
    expect(await blobStates(h.blobs, [fresh.configDigest, ...fresh.layerDigests])).toEqual(['committed', 'committed']);
    expect(await storeProblems(h.index, h.blobs)).toEqual([]);
  });
});

describe('verify', () => {
  it('finds a blob file changed on disk; --repair drops it and the next pull refetches correct bytes', async () => {
    await open();
    const img = seedImage(up, 'app', 'v1', [layer('v')]);
    await pullImage(h, 'local/app', 'v1');
    const damaged = img.layerDigests[0];
    writeFileSync(h.blobs.pathOf(damaged as never), layer('w'));
    const found = await h.lifecycle.verify({ repair: false });
    expect(found).toMatchObject({ checkedBlobs: 2, checkedManifests: 1, damagedBlobs: [damaged], damagedManifests: [], repaired: false });
    expect(existsSync(h.blobs.pathOf(damaged as never))).toBe(true);
    await h.lifecycle.verify({ repair: true });
    up.reset();
    await pullImage(h, 'local/app', 'v1');
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
    expect(createHash('sha256').update(h.readLocation((await h.request('GET', `/v2/local/app/blobs/${damaged}`)).headers.Location)).digest('hex')).toBe(damaged.slice(7));
    expect((await h.lifecycle.verify({ repair: false })).damagedBlobs).toEqual([]);
  });
});

describe('GC racing pulls and fills', () => {
  it('GC passes in a loop while clients pull retained images and new fills commit: every pull byte-exact, nothing referenced missing', async () => {
    await open({ expireAfterUnpulledDays: 1 });
    const retained = ['r1', 'r2', 'r3'].map((r, i) => ({ repo: r, img: seedImage(up, r, 'v1', [layer('s', 30_000), layer(`r${i}`)]) }));
    const fresh = ['n1', 'n2', 'n3'].map((r, i) => ({ repo: r, img: seedImage(up, r, 'v1', [layer('s', 30_000), layer(`n${i}`)]) }));
    const garbage = ['g1', 'g2'].map((r, i) => ({ repo: r, img: seedImage(up, r, 'v1', [layer(`g${i}`)]) }));
    for (const { repo } of [...retained, ...garbage]) await pullImage(h, `local/${repo}`, 'v1');
    h.clock.now += 2 * DAY; // the garbage expires; the retained images are pulled again below
    for (const { repo } of retained) await pullImage(h, `local/${repo}`, 'v1');
    up.reset();
    let passes = 0;
    let pulling = true;
    const gcLoop = (async () => {
      while (pulling || passes < 3) {
        const report = await h.lifecycle.gc();
        expect(report.complete).toBe(true);
        passes++;
        h.clock.now += 20 * 60 * 1000;
      }
    })();
    const clients = [0, 1, 2, 3].map(async (k) => {
      for (let i = 0; i < 12; i++) {
        const { repo } = retained[(k + i) % retained.length];
        await pullImage(h, `local/${repo}`, 'v1');
        if (i === 3 + k && k < fresh.length) await pullImage(h, `local/${fresh[k].repo}`, 'v1');
      }
    });
    await Promise.all(clients);
    pulling = false;
    await gcLoop;
    expect(passes).toBeGreaterThanOrEqual(3);
    // The only blobs fetched upstream meanwhile: the new images' own config and layer (their shared layer was
    // stored). A retained blob the GC had removed would have been fetched again.
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(2 * fresh.length);
    for (const { repo, img } of [...retained, ...fresh]) {
      expect(await blobStates(h.blobs, [img.configDigest, ...img.layerDigests]), repo).toEqual(['committed', 'committed', 'committed']);
    }
    for (const { img } of garbage) expect(await blobStates(h.blobs, img.layerDigests)).not.toContain('committed');
    expect(await storeProblems(h.index, h.blobs)).toEqual([]);
    up.faults.down = true;
    for (const { repo } of [...retained, ...fresh]) await pullImage(h, `local/${repo}`, 'v1');
  });
});
