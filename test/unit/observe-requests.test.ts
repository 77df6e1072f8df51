/**
 * What the cache did, per request (shared/observe/): the request scope's `cache` field (hit, miss, stale,
 * revalidated, refreshed, none) and `rule`, the metrics the core counts (requests by kind and result, served
 * bytes), and every upstream request counted exactly (the fake upstream records each one it receives) with its
 * body bytes, and logged at DEBUG without a query string or a credential. Runs the registry on the embedded stores
 * against the in-process fake upstream (harness.ts), with a recording metrics sink.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { inScope, newScope, type RequestScope } from '../../shared/observe/request-scope.js';
import { createHarness, silentLog } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { recordingMetrics } from '../support/recording-metrics.js';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
const rec = recordingMetrics();

beforeAll(async () => {
  up = await startFakeUpstream({ auth: { scheme: 'bearer', username: 'u', password: 'p4ssw0rd-secret' } });
  h = await createHarness([{ prefix: 'up', upstream: up.url, username: 'u', accessToken: 'p4ssw0rd-secret', ttlSeconds: 60 }], { metrics: rec.metrics });
});
afterAll(async () => {
  h.close();
  await up.close();
});
beforeEach(() => {
  rec.reset();
  up.reset();
  up.faults.down = false;
  silentLog.lines.length = 0;
});

/** One request through the app in a scope of its own; returns the response and what the scope gathered. */
async function observed(method: string, path: string): Promise<{ status: number; scope: RequestScope; headers: Record<string, string> }> {
  const scope = newScope();
  const res = await inScope(scope, () => h.request(method, path));
  return { status: res.status, headers: res.headers, scope };
}

describe('the cache field and the request metrics', () => {
  it('a cold pull is a miss for the manifest and each blob, a warm one a hit; counts and bytes are exact', async () => {
    const layers = [Buffer.alloc(3000, 1), Buffer.alloc(5000, 2)];
    const img = seedImage(up, 'team/app', '1.0', layers);
    const blobs = [img.configDigest, ...img.layerDigests];
    const blobBytes = img.config.length + 8000;

    const cold = [await observed('GET', '/v2/up/team/app/manifests/1.0')];
    for (const d of blobs) cold.push(await observed('GET', `/v2/up/team/app/blobs/${d}`));
    expect(cold.map((c) => [c.status, c.scope.cache, c.scope.rule])).toEqual([[200, 'miss', 'up'], ...blobs.map(() => [307, 'miss', 'up'])]);
    // Every request the upstream received was counted, token requests included, with the request that caused it.
    expect(rec.upstream().length).toBe(up.requests.length);
    expect(cold.reduce((a, c) => a + c.scope.upstreamRequests, 0)).toBe(up.requests.length);
    expect(rec.upstream({ kind: 'token' }).length).toBe(up.count({ kind: 'token' }));
    expect(up.count({ kind: 'token' })).toBeGreaterThan(0);
    expect(rec.upstream({ kind: 'blob', method: 'GET', status: 200 }).length).toBe(3);
    expect(rec.upstream({ status: 401 }).length).toBe(up.requests.filter((r) => !r.authorization && r.kind !== 'token').length);
    // Bytes: the manifest and blob bodies, plus the token answers and 401 bodies, all counted as they arrived.
    expect(rec.upstreamBytes('up')).toBeGreaterThanOrEqual(img.body.length + blobBytes);
    expect(rec.servedBytes('up')).toBe(img.body.length + blobBytes);

    rec.reset();
    up.reset();
    const warm = [await observed('GET', '/v2/up/team/app/manifests/1.0'), await observed('HEAD', '/v2/up/team/app/manifests/1.0')];
    for (const d of blobs) warm.push(await observed('GET', `/v2/up/team/app/blobs/${d}`), await observed('HEAD', `/v2/up/team/app/blobs/${d}`));
    expect(warm.every((w) => w.scope.cache === 'hit' && w.scope.upstreamRequests === 0)).toBe(true);
    expect(up.requests).toEqual([]);
    expect(rec.upstream()).toEqual([]);
    expect(rec.requests({ kind: 'manifest', result: 'hit' }).length).toBe(2);
    expect(rec.requests({ kind: 'blob', result: 'hit' }).length).toBe(6);
    // A HEAD serves no bytes; a GET serves the manifest body or the blob it redirects to.
    expect(rec.servedBytes('up')).toBe(img.body.length + blobBytes);
  });

  it('a stale tag: revalidated when unchanged, refreshed when moved, stale when the upstream is down', async () => {
    seedImage(up, 'team/tags', 'v', [Buffer.from('one')]);
    expect((await observed('GET', '/v2/up/team/tags/manifests/v')).scope.cache).toBe('miss');
    up.reset();
    h.clock.now += 61_000;
    const same = await observed('GET', '/v2/up/team/tags/manifests/v');
    expect([same.scope.cache, same.scope.upstreamRequests]).toEqual(['revalidated', up.requests.length]);
    expect(up.requests.map((r) => r.method)).not.toContain('GET');
    h.clock.now += 61_000;
    const moved = seedImage(up, 'team/tags', 'v', [Buffer.from('two')]);
    const refreshed = await observed('GET', '/v2/up/team/tags/manifests/v');
    expect(refreshed.scope.cache).toBe('refreshed');
    expect(refreshed.headers['Docker-Content-Digest']).toBe(moved.digest);
    h.clock.now += 61_000;
    up.faults.down = true;
    const stale = await observed('GET', '/v2/up/team/tags/manifests/v');
    expect([stale.status, stale.scope.cache, stale.headers['Docker-Content-Digest']]).toEqual([200, 'stale', moved.digest]);
    expect(rec.requests({ kind: 'manifest' }).map((r) => r.result)).toEqual(['miss', 'revalidated', 'refreshed', 'stale']);
    expect(rec.events.tagCheck.map(([e]) => e.result)).toEqual(['unchanged', 'moved', 'error']);
  });

  it('tag lists come from the upstream (miss), or the cached tags (stale); the catalog is a hit; /v2/ is none and not counted', async () => {
    seedImage(up, 'team/list', 'a', [Buffer.from('x')]);
    expect((await h.request('GET', '/v2/up/team/list/manifests/a')).status).toBe(200);
    rec.reset();
    expect((await observed('GET', '/v2/up/team/list/tags/list')).scope.cache).toBe('miss');
    up.faults.down = true;
    const cached = await observed('GET', '/v2/up/team/list/tags/list');
    expect([cached.status, cached.scope.cache]).toEqual([200, 'stale']);
    const catalog = await observed('GET', '/v2/_catalog');
    expect([catalog.scope.cache, catalog.scope.rule]).toEqual(['hit', undefined]);
    const ping = await observed('GET', '/v2/');
    expect(ping.scope.cache).toBeUndefined();
    expect(rec.requests().map((r) => [r.kind, r.rule, r.result])).toEqual([['tags', 'up', 'miss'], ['tags', 'up', 'stale'], ['catalog', '-', 'hit']]);
  });

  it('an error answer counts as result error; the log keeps what the lookup found', async () => {
    const missing = await observed('GET', '/v2/up/team/none/manifests/nope');
    expect([missing.status, missing.scope.cache]).toEqual([404, 'miss']);
    const noRule = await observed('GET', '/v2/elsewhere/x/manifests/1');
    expect([noRule.status, noRule.scope.cache, noRule.scope.rule]).toEqual([404, undefined, undefined]);
    expect(rec.requests().map((r) => [r.kind, r.rule, r.result, r.servedBytes])).toEqual([['manifest', 'up', 'error', 0], ['manifest', '-', 'error', 0]]);
  });
});

describe('accounting off (PULLTHROUGH_ACCOUNTING=off, the benchmark baseline)', () => {
  it('answers the same and records nothing', async () => {
    const off = await createHarness([{ prefix: 'up', upstream: up.url, username: 'u', accessToken: 'p4ssw0rd-secret' }], { metrics: rec.metrics, accounting: false });
    try {
      const img = seedImage(up, 'team/off', '1', [Buffer.from('off layer')]);
      const res = await off.request('GET', '/v2/up/team/off/manifests/1');
      expect([res.status, res.headers['Docker-Content-Digest']]).toEqual([200, img.digest]);
      expect(rec.requests()).toEqual([]);
    } finally {
      off.close();
    }
  });
});

describe('upstream requests in the log', () => {
  it('each is one DEBUG line with method, host, path, status, ms and bytes; never a query string or a credential', async () => {
    const img = seedImage(up, 'team/logged', '1', [Buffer.alloc(1234, 7)]);
    await observed('GET', '/v2/up/team/logged/manifests/1');
    await observed('GET', `/v2/up/team/logged/blobs/${img.layerDigests[0]}`);
    await new Promise((r) => setImmediate(r)); // 'close' of the last body
    const lines = silentLog.lines.filter((l) => l.message === 'upstream request').map((l) => l.extra[0] as Record<string, unknown>);
    expect(lines.every((l) => silentLog.lines.find((x) => x.extra[0] === l)?.level === 'debug')).toBe(true);
    expect(lines.length).toBe(up.requests.length);
    const blobGet = lines.find((l) => l.kind === 'blob' && l.method === 'GET' && l.status === 200)!;
    expect(blobGet).toMatchObject({ rule: 'up', host: up.host, path: `/v2/team/logged/blobs/${img.layerDigests[0]}`, bytes: 1234 });
    expect(typeof blobGet.ms).toBe('number');
    const token = lines.find((l) => l.kind === 'token')!;
    expect(token.path).toBe('/token');
    const text = JSON.stringify(silentLog.lines);
    expect(text).not.toContain('p4ssw0rd-secret');
    expect(text).not.toContain(Buffer.from('u:p4ssw0rd-secret').toString('base64'));
    expect(text).not.toMatch(/tok-\d/);
    expect(text).not.toContain('scope=');
  });
});
