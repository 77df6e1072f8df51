/**
 * Prefetch (shared/registry/prefetch.ts) and the stats counters (shared/registry/stats.ts) on the embedded stores
 * against the in-process fake upstream: a prefetch of an image index fills every platform (or those asked), a
 * second one makes no upstream request, an unknown platform is refused; the scheduled pass prefetches the config's
 * list; the stats recorder writes a batch per rule and hour (not a write per request) with exact counts.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { noMetrics } from '../../shared/observe/metrics.js';
import { inScope, newScope } from '../../shared/observe/request-scope.js';
import { parseImageRef, prefetchImage } from '../../shared/registry/prefetch.js';
import { runScheduledPass } from '../../shared/registry/scheduled.js';
import { createStatsRecorder, readStats } from '../../shared/registry/stats.js';
import { HOUR_MS, type RuleCounters } from '../../shared/store/counters.js';
import { openSqliteCounters } from '../../shared/store/sqlite-counters.js';
import { createHarness, silentLog } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { scratchDir } from '../support/scratch.js';

const INDEX = 'application/vnd.oci.image.index.v1+json';

let up: FakeUpstream;
const services = (h: Awaited<ReturnType<typeof createHarness>>) => ({ manifests: h.manifests, blobs: h.blobService });
beforeAll(async () => {
  up = await startFakeUpstream();
});
afterAll(async () => up.close());

/** An OCI index of an amd64 and an arm64 image (sharing no blob) under `repo:tag`. */
function seedIndex(repo: string, tag: string) {
  const amd = seedImage(up, repo, undefined, [Buffer.from(`${repo} amd64 layer`)], { arch: 'amd64' });
  const arm = seedImage(up, repo, undefined, [Buffer.from(`${repo} arm64 layer, a little longer`)], { arch: 'arm64' });
  const body = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: INDEX,
    manifests: [amd, arm].map((m, i) => ({ mediaType: m.mediaType, digest: m.digest, size: m.body.length, platform: { os: 'linux', architecture: i ? 'arm64' : 'amd64', ...(i ? { variant: 'v8' } : {}) } })),
  }));
  const digest = up.putManifest(repo, tag, { body, contentType: INDEX });
  return { digest, amd, arm };
}

describe('prefetch', () => {
  it('fills every platform of an index; the second time is a no-op; a platform list limits it', async () => {
    const h = await createHarness([{ prefix: 'up', upstream: up.url }]);
    try {
      const img = seedIndex('team/multi', 'v1');
      up.reset();
      const planned: number[] = [];
      const r = await prefetchImage(services(h), parseImageRef('up/team/multi:v1'), { report: { planned: (p) => planned.push(p.bytes) } });
      const blobs = [img.amd.configDigest, ...img.amd.layerDigests, img.arm.configDigest, ...img.arm.layerDigests];
      const bytes = img.amd.config.length + img.arm.config.length + `team/multi amd64 layer`.length + `team/multi arm64 layer, a little longer`.length;
      expect(r).toMatchObject({ image: 'up/team/multi:v1', digest: img.digest, platforms: ['linux/amd64', 'linux/arm64/v8'], blobs: 4, bytes, cachedBlobs: 0, fetchedBytes: bytes });
      expect(planned).toEqual([bytes]);
      for (const d of blobs) expect(await h.blobs.stat(d as never)).toMatchObject({ size: expect.any(Number) });
      expect(up.count({ kind: 'blob', method: 'GET' })).toBe(4);
      up.reset();
      const again = await prefetchImage(services(h), parseImageRef('up/team/multi:v1'));
      expect(again).toMatchObject({ cachedBlobs: 4, fetchedBytes: 0 });
      expect(up.requests).toEqual([]);

      const other = seedIndex('team/other', 'v2');
      const armOnly = await prefetchImage(services(h), parseImageRef('up/team/other:v2'), { platforms: ['linux/arm64'] });
      expect(armOnly).toMatchObject({ platforms: ['linux/arm64/v8'], blobs: 2 });
      expect(await h.blobs.stat(other.amd.layerDigests[0] as never)).toBeUndefined();
      await expect(prefetchImage(services(h), parseImageRef('up/team/other:v2'), { platforms: ['linux/s390x'] })).rejects.toThrow('has no linux/s390x image (it has linux/amd64, linux/arm64/v8)');
      expect(() => parseImageRef('up/team/other')).toThrow(RangeError);
      expect(parseImageRef(`up/team/other@${other.digest}`)).toEqual({ name: 'up/team/other', reference: other.digest });
    } finally {
      h.close();
    }
  });

  it('the scheduled pass prefetches the config list; a failing entry is counted, not fatal', async () => {
    const h = await createHarness([{ prefix: 'up', upstream: up.url }]);
    try {
      const img = seedImage(up, 'team/listed', 'v1', [Buffer.from('listed layer')]);
      const report = await runScheduledPass({ ...services(h), refresher: h.refresher, logger: silentLog, config: { prefetch: [{ image: 'up/team/listed:v1', platforms: [] }, { image: 'up/team/absent:v1', platforms: [] }] } });
      expect(report).toMatchObject({ checked: 0, prefetch: { images: 1, failed: 1, fetchedBytes: img.config.length + 'listed layer'.length } });
      expect(await h.blobs.stat(img.layerDigests[0] as never)).toMatchObject({ size: 12 });
    } finally {
      h.close();
    }
  });
});

describe('stats counters', () => {
  it('a batch per rule and hour, not a write per request; the counts and the hit ratio are exact', async () => {
    const counters = openSqliteCounters(join(scratchDir('stats-'), 'index.db'));
    const writes: string[] = [];
    const counting: RuleCounters = { add: (rule, hour, c, now) => (writes.push(rule), counters.add(rule, hour, c, now)), read: (r, s) => counters.read(r, s) };
    const clock = { now: 1_800_000_000_000 };
    const stats = createStatsRecorder({ counters: counting, now: () => clock.now, log: silentLog });
    const h = await createHarness([{ prefix: 'up', upstream: up.url }], { metrics: stats });
    try {
      const img = seedImage(up, 'team/counted', 'v1', [Buffer.alloc(2000, 9)]);
      up.reset();
      const pull = async () => {
        await h.request('GET', '/v2/up/team/counted/manifests/v1');
        for (const d of [img.configDigest, ...img.layerDigests]) await h.request('GET', `/v2/up/team/counted/blobs/${d}`);
      };
      await pull();
      const upstream = up.requests.length;
      await pull();
      await h.request('GET', '/v2/up/team/counted/manifests/nope');
      await h.request('GET', '/v2/_catalog');
      expect(writes).toEqual([]);
      await stats.flushIfDue();
      expect(writes).toEqual([]); // not a minute yet
      clock.now += 60_000;
      await stats.flushIfDue();
      expect(writes.sort()).toEqual(['-', 'up']);
      const [report] = await readStats(counters, ['up'], clock.now, { up: 12345 });
      const imageBytes = img.body.length + img.config.length + 2000;
      const expected = { requests: 7, hits: 3, misses: 3, errors: 1, upstreamRequests: upstream + 1, servedBytes: 2 * imageBytes };
      expect(report.lastDay).toMatchObject({ ...expected, hitRatio: 0.5 });
      expect(report.sinceStart).toMatchObject({ ...expected, since: clock.now });
      expect(report.lastDay.upstreamBytes).toBeGreaterThanOrEqual(imageBytes);
      expect(report.storedBytes).toBe(12345);
      // An hour later, another batch: the last day still counts both; 23 hours after it only the new one.
      clock.now += HOUR_MS;
      await inScope(newScope(), () => h.request('GET', '/v2/up/team/counted/manifests/v1'));
      await stats.close();
      expect((await readStats(counters, ['up'], clock.now))[0].lastDay.requests).toBe(8);
      expect((await readStats(counters, ['up'], clock.now + 23 * HOUR_MS))[0]).toMatchObject({ lastDay: { requests: 1 }, sinceStart: { requests: 8 } });
      expect(noMetrics.request({ rule: 'x', kind: 'blob', result: 'hit', servedBytes: 1 })).toBeUndefined();
    } finally {
      h.close();
      counters.close();
    }
  });
});
