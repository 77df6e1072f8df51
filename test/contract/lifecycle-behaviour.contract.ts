/**
 * The lifecycle's behaviour on a whole backend (registry + GC over real stores), run on SQLite + files in the unit
 * tier and on DynamoDB Local + s3rver in the e2e tier: two repositories sharing a layer, one purged, a GC after the
 * grace period — the shared layer and the other image stay pullable byte-exact with the upstream stopped, the
 * purged image's own blobs are gone from storage itself; a budget evicts the least recently pulled image; GC passes
 * racing pulls and fills never make a retained image unpullable. An in-process fake upstream (it can be switched
 * off) and an injected clock (no sleeps).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHarness, type HarnessBackend } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { blobStates, pullImage, storeProblems } from '../support/lifecycle-checks.js';

const HOUR = 3600 * 1000;
const DAY = 24 * HOUR;
const layer = (label: string, size = 20_000) => Buffer.alloc(size, label);

/** What an adapter's test gives the suite: a fresh backend per test, or undefined for the harness's embedded one. */
export interface LifecycleBackendFixture {
  backend?: HarnessBackend;
  /** Digests with an object in storage (see HarnessBackend); required when `backend` is undefined too. */
  storageObjects(h: Awaited<ReturnType<typeof createHarness>>): Promise<string[]>;
  close(): Promise<void>;
}

export function describeLifecycleBehaviour(label: string, open: () => Promise<LifecycleBackendFixture>): void {
  describe(`lifecycle behaviour: ${label}`, () => {
    let up: FakeUpstream;
    let fixture: LifecycleBackendFixture;
    let h: Awaited<ReturnType<typeof createHarness>>;
    const read = (url: string) => (fixture.backend ? fixture.backend.readLocation(url) : h.readLocation(url));
    const index = () => fixture.backend?.index ?? h.index;
    const reaper = () => fixture.backend?.blobs ?? h.blobs;
    const harness = async (rule: Record<string, unknown> = {}, lifecycle: unknown = {}) => {
      h = await createHarness([{ prefix: 'local', upstream: up.url, ttlSeconds: 30 * 24 * 3600, ...rule }], { lifecycle, backend: fixture.backend });
    };
    beforeEach(async () => {
      up = await startFakeUpstream();
      fixture = await open();
    });
    afterEach(async () => {
      h?.close();
      await fixture.close();
      await up.close();
    });

    it('two repositories share a layer; one is purged; after the grace period GC deletes its own blobs from storage; the other pulls offline', async () => {
      await harness();
      const shared = layer('s', 50_000);
      const a = seedImage(up, 'a', 'v1', [shared, layer('x')]);
      const b = seedImage(up, 'b', 'v1', [shared, layer('y')]);
      await pullImage(h, 'local/a', 'v1', read);
      await pullImage(h, 'local/b', 'v1', read);
      const aOnly = [a.configDigest, a.layerDigests[1]];
      expect(await h.lifecycle.purge('local/a')).toMatchObject({ repositories: 1, evictedTags: 1, deletedManifests: 1, deletedBlobs: 2 });
      expect(await blobStates(reaper(), aOnly)).toEqual(['unpublished', 'unpublished']);
      // The emptied repository leaves the catalog (and `ls`): nothing of it is left to list.
      expect(h.jsonOf(await h.request('GET', '/v2/_catalog')).repositories).toEqual(['local/b']);
      expect((await h.lifecycle.gc()).removedObjects).toBe(0); // within the grace period the bytes stay
      expect(await fixture.storageObjects(h)).toEqual(expect.arrayContaining(aOnly));
      h.clock.now += 2 * HOUR;
      const report = await h.lifecycle.gc();
      expect(report).toMatchObject({ complete: true, removedObjects: 2, evictedTags: 0, deletedManifests: 0, deletedBlobs: 0 });
      const objects = await fixture.storageObjects(h);
      for (const d of aOnly) expect(objects).not.toContain(d);
      expect(objects).toEqual(expect.arrayContaining([a.layerDigests[0], b.configDigest, b.layerDigests[1]]));
      expect(report.storedBytes).toBe(shared.length + 20_000 + b.config.length + b.body.length);
      expect(report.rules.local.storedBytes).toBe(report.storedBytes);
      up.faults.down = true;
      await pullImage(h, 'local/b', 'v1', read);
      expect((await h.request('GET', '/v2/local/a/manifests/v1')).status).toBe(503);
      expect(await storeProblems(index(), reaper())).toEqual([]);
      up.faults.down = false;
      up.reset();
      await pullImage(h, 'local/a', 'v1', read);
      expect(up.count({ method: 'GET', kind: 'blob' })).toBe(2);
      expect(h.jsonOf(await h.request('GET', '/v2/_catalog')).repositories).toEqual(['local/a', 'local/b']);
    });

    it('a budget that fits two of three images evicts the least recently pulled one', async () => {
      const imgs = { a: seedImage(up, 'a', 'v1', [layer('a')]), b: seedImage(up, 'b', 'v1', [layer('b')]), c: seedImage(up, 'c', 'v1', [layer('c')]) };
      const bytesOf = (img: ReturnType<typeof seedImage>) => img.body.length + img.config.length + 20_000;
      await harness({ lifecycle: { maxBytes: bytesOf(imgs.a) + bytesOf(imgs.b) + 1000 } });
      for (const k of ['a', 'b', 'c', 'a'] as const) {
        await pullImage(h, `local/${k}`, 'v1', read);
        h.clock.now += 2 * HOUR + 1000;
      }
      const report = await h.lifecycle.gc();
      expect(report).toMatchObject({ complete: true, evictedTags: 1, deletedManifests: 1, deletedBlobs: 2, freedBytes: bytesOf(imgs.b), overBudget: [] });
      expect(report.storedBytes).toBe(bytesOf(imgs.a) + bytesOf(imgs.c));
      expect(await index().getTag('local/b', 'v1')).toBeUndefined();
      up.faults.down = true;
      await pullImage(h, 'local/a', 'v1', read);
      await pullImage(h, 'local/c', 'v1', read);
    });

    it('GC passes in a loop while clients pull retained images and new fills commit: every pull byte-exact, nothing referenced missing', async () => {
      await harness({}, { expireAfterUnpulledDays: 1 });
      const retained = ['r1', 'r2', 'r3'].map((r, i) => ({ repo: r, img: seedImage(up, r, 'v1', [layer('s', 30_000), layer(`r${i}`)]) }));
      const fresh = ['n1', 'n2', 'n3'].map((r, i) => ({ repo: r, img: seedImage(up, r, 'v1', [layer('s', 30_000), layer(`n${i}`)]) }));
      const garbage = ['g1', 'g2'].map((r, i) => ({ repo: r, img: seedImage(up, r, 'v1', [layer(`g${i}`)]) }));
      for (const { repo } of [...retained, ...garbage]) await pullImage(h, `local/${repo}`, 'v1', read);
      h.clock.now += 2 * DAY; // the garbage expires; the retained images are pulled again below
      for (const { repo } of retained) await pullImage(h, `local/${repo}`, 'v1', read);
      up.reset();
      let passes = 0;
      let pulling = true;
      const gcLoop = (async () => {
        while (pulling || passes < 3) {
          expect((await h.lifecycle.gc()).complete).toBe(true);
          passes++;
          h.clock.now += 20 * 60 * 1000;
        }
      })();
      await Promise.all([0, 1, 2, 3].map(async (k) => {
        for (let i = 0; i < 8; i++) {
          await pullImage(h, `local/${retained[(k + i) % retained.length].repo}`, 'v1', read);
          if (i === 2 + k && k < fresh.length) await pullImage(h, `local/${fresh[k].repo}`, 'v1', read);
        }
      }));
      pulling = false;
      await gcLoop;
      // Fetched upstream meanwhile: only the new images' own config and layer. A retained blob the GC had
      // removed would have been fetched again.
      expect(up.count({ method: 'GET', kind: 'blob' })).toBe(2 * fresh.length);
      for (const { repo, img } of [...retained, ...fresh]) {
        expect(await blobStates(reaper(), [img.configDigest, ...img.layerDigests]), repo).toEqual(['committed', 'committed', 'committed']);
      }
      for (const { img } of garbage) expect(await blobStates(reaper(), img.layerDigests)).not.toContain('committed');
      expect(await storeProblems(index(), reaper())).toEqual([]);
      up.faults.down = true;
      for (const { repo } of [...retained, ...fresh]) await pullImage(h, `local/${repo}`, 'v1', read);
    });
  });
}
