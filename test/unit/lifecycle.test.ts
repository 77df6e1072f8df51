/**
 * The lifecycle on the embedded stores (SQLite + files), against an in-process fake upstream that counts requests
 * (and can be switched off: "the upstream stopped"), with an injected clock: last-pulled times, purge, GC,
 * budgets, expiry, verify, and GC passes racing pulls and fills.
 */
import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { describeLifecycleBehaviour } from '../contract/lifecycle-behaviour.contract.js';
import { graceSecondsFor } from '../../shared/config-lifecycle.js';
import { parseConfig } from '../../shared/config.js';
import { createGarbageCollector } from '../../shared/registry/lifecycle/gc.js';
import { createPolicies } from '../../shared/registry/lifecycle/policy.js';
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

describe('purge', () => {
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

describe('a pass run without the server\'s config', () => {
  it('a dry run writes nothing, and no pass writes references under no rule (the older-store backfill waits for the right config)', async () => {
    await open();
    seedImage(up, 'app', 'v1', [layer('p')]);
    await pullImage(h, 'local/app', 'v1');
    const db = (await import('better-sqlite3')).default(h.dbPath, { readonly: true });
    const refs = () => db.prepare('SELECT rule, count(*) AS n FROM blob_refs GROUP BY rule ORDER BY rule').all();
    try {
      expect(refs()).toEqual([{ rule: 'local', n: 2 }]);
      await h.index.putLifecycleState('references', undefined); // a store an older release made: backfill due
      // The CLI on this store with the built-in rules only (no rule named 'local'), as a user without the config.
      const cli = await createHarness([{ prefix: 'docker-hub', upstream: up.url }], {
        backend: { index: h.index, blobs: h.blobs, readLocation: () => Promise.reject(new Error('unused')), storageObjects: () => Promise.reject(new Error('unused')) },
      });
      try {
        expect((await cli.lifecycle.gc({ dryRun: true })).dryRun).toBe(true);
        expect(refs()).toEqual([{ rule: 'local', n: 2 }]);
        expect(await h.index.getLifecycleState('references')).toBeUndefined();
        await cli.lifecycle.gc();
        expect(refs()).toEqual([{ rule: 'local', n: 2 }]);
        expect(await h.index.getLifecycleState('references')).toBeUndefined(); // left to a pass with the config
      } finally {
        cli.close();
      }
      await h.lifecycle.gc();
      expect(refs()).toEqual([{ rule: 'local', n: 2 }]);
      expect(await h.index.getLifecycleState('references')).toBe('v2');
    } finally {
      db.close();
    }
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
      expect(over.overBudget).toEqual([{ scope: 'local', storedBytes: bytesOf(imgs.a), maxBytes: 1000, reason: 'kept-content' }]);
    } finally {
      tight.close();
    }
  });

  it('a budget needing more evictions than one candidate list holds takes more rounds in the pass; one cut short says the next pass goes on', async () => {
    // Five images, a budget that fits one; two candidates per round (MAX_CANDIDATES is 2000 in production).
    const rule = { prefix: 'local', upstream: up.url, ttlSeconds: 30 * 24 * 3600, lifecycle: { maxBytes: 1 } };
    const config = parseConfig({ rules: [rule] });
    h = await createHarness([rule]);
    const { settings, policyOf } = createPolicies(config, graceSecondsFor(config.lifecycle, 900));
    const imgs = ['a', 'b', 'c', 'd', 'e'].map((r) => seedImage(up, r, 'v1', [layer(r)]));
    for (const r of ['a', 'b', 'c', 'd', 'e']) {
      await pullImage(h, `local/${r}`, 'v1');
      h.clock.now += 2 * HOUR + 1000;
    }
    h.clock.now += DAY;
    const report = await createGarbageCollector(h.deps, { ...settings, maxCandidates: 2 }, policyOf).run();
    // Three rounds (2 + 2 + 1 candidates): every image goes, least recently pulled first; nothing evictable is left.
    expect(report).toMatchObject({ complete: true, evictedTags: 5, deletedManifests: 5, deletedBlobs: 10, storedBytes: 0, overBudget: [] });
    expect(await h.index.listRepositories()).toEqual([]);

    // Pulled again, then a pass whose deadline passes right after its first eviction (Date.now moved past it:
    // the deadline is wall-clock time): the report says the budget is over with evictable content left, not
    // kept content, and the next pass evicts the rest.
    for (const r of ['a', 'b']) await pullImage(h, `local/${r}`, 'v1');
    h.clock.now += DAY;
    const deadline = Date.now() + 3_600_000;
    const lifecycle = h.deps.stores.lifecycle!;
    const deleteTagIf = lifecycle.deleteTagIf.bind(lifecycle);
    const clock = vi.spyOn(Date, 'now');
    lifecycle.deleteTagIf = async (...args) => {
      const deleted = await deleteTagIf(...args);
      clock.mockReturnValue(deadline + 1);
      return deleted;
    };
    try {
      const cut = await createGarbageCollector(h.deps, { ...settings, maxCandidates: 2 }, policyOf).run({ deadline });
      expect(cut).toMatchObject({ complete: true, evictedTags: 1, overBudget: [{ scope: 'local', maxBytes: 1, reason: 'next-pass' }] });
    } finally {
      clock.mockRestore();
      lifecycle.deleteTagIf = deleteTagIf;
    }
    const next = await createGarbageCollector(h.deps, { ...settings, maxCandidates: 2 }, policyOf).run();
    expect(next).toMatchObject({ complete: true, evictedTags: 1, storedBytes: 0, overBudget: [] });
    expect(imgs).toHaveLength(5);
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

  it('a verify stopped by its deadline (as the gc function runs it) saves its place; the next resumes and finds the rest', async () => {
    await open();
    const imgs = ['a', 'b'].map((r) => seedImage(up, r, 'v1', [layer(r)]));
    for (const r of ['a', 'b']) await pullImage(h, `local/${r}`, 'v1');
    const blobs = [...imgs.flatMap((i) => [i.configDigest, ...i.layerDigests])].sort();
    const damaged = blobs[blobs.length - 1]; // the last in digest order: only the second run reaches it
    writeFileSync(h.blobs.pathOf(damaged as never), Buffer.from('not the blob'));
    const deadline = Date.now() + 3_600_000;
    const reaper = h.deps.stores.reaper!;
    const readBlob = reaper.readBlob.bind(reaper);
    const clock = vi.spyOn(Date, 'now');
    reaper.readBlob = async (digest) => {
      clock.mockReturnValue(deadline + 1); // the deadline passes while the first blob is read
      return readBlob(digest);
    };
    try {
      const first = await h.lifecycle.verify({ repair: true, deadline, resume: true });
      expect(first).toMatchObject({ complete: false, checkedBlobs: 1, checkedManifests: 0, damagedBlobs: [] });
    } finally {
      clock.mockRestore();
      reaper.readBlob = readBlob;
    }
    const second = await h.lifecycle.verify({ repair: true, deadline: Date.now() + 3_600_000, resume: true });
    expect(second).toMatchObject({ complete: true, checkedBlobs: 3, checkedManifests: 2, damagedBlobs: [damaged], repaired: true });
    // Finished: the next resumed run starts from the beginning again.
    expect(await h.lifecycle.verify({ repair: false, resume: true })).toMatchObject({ complete: true, checkedBlobs: 3, checkedManifests: 2, damagedBlobs: [] });
  });
});

// Shared layer + purge + GC, a budget's least recently pulled image, GC racing pulls and fills: the behaviour suite
// both backends run (DynamoDB Local + s3rver: test/e2e/lifecycle.e2e.test.ts).
describeLifecycleBehaviour('SQLite + files', async () => ({
  async storageObjects(harness) {
    const digests: string[] = [];
    for (const dir of ['blobs', 'trash']) {
      for (const algorithm of ['sha256', 'sha512']) {
        for (const f of await fs.readdir(join(harness.dir, dir, algorithm)).catch(() => [] as string[])) digests.push(`${algorithm}:${f}`);
      }
    }
    return digests;
  },
  async close() {},
}));
