/**
 * The per-rule freshness policy (pinned and frequent tags, onUpstreamDelete) and pulls of cached tags through
 * upstream trouble (slow, flapping, missing), against the counting in-process fake upstream, whose fault switches
 * make what a real registry cannot be made to do on demand. (The refresh runs: refresh.test.ts.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from '../support/eventually.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const HOUR = 3600 * 1000;
let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  h?.close();
  await up?.close();
});

async function setup(rule: Record<string, unknown> = {}, extra: Parameters<typeof createHarness>[1] = {}) {
  up = await startFakeUpstream();
  h = await createHarness([{ prefix: 'p', upstream: up.url, ttlSeconds: 3600, ...rule }], extra);
}

async function pullAll(repo: string, tags: string[]) {
  for (const t of tags) expect((await h.request('GET', `/v2/p/${repo}/manifests/${t}`)).status).toBe(200);
}


describe('per-rule freshness policy', () => {
  it('pinned tags are never re-checked once cached, on pull or by the schedule', async () => {
    await setup({ pinnedTags: '^v\\d+\\.\\d+\\.\\d+$' });
    seedImage(up, 'app', 'v1.2.3', [Buffer.from('release')]);
    seedImage(up, 'app', 'latest', [Buffer.from('latest')]);
    await pullAll('app', ['v1.2.3', 'latest']);
    expect((await h.index.getTag('p/app', 'v1.2.3'))?.dueAt).toBeUndefined();
    h.clock.now += 30 * 24 * HOUR;
    up.reset();
    expect((await h.request('GET', '/v2/p/app/manifests/v1.2.3')).status).toBe(200);
    expect(up.count()).toBe(0);
    const report = await h.refresher.refreshDue();
    expect(report.checked).toBe(1);
    expect(up.requests.map((r) => r.path)).toEqual(['/v2/app/manifests/latest']);
  });

  it('frequent tags are re-checked after their own shorter TTL', async () => {
    await setup({ frequentTags: { pattern: '^latest$', ttlSeconds: 60 } });
    seedImage(up, 'app', 'latest', [Buffer.from('latest')]);
    seedImage(up, 'app', 'stable', [Buffer.from('stable')]);
    await pullAll('app', ['latest', 'stable']);
    h.clock.now += 61 * 1000;
    up.reset();
    expect((await h.refresher.refreshDue()).checked).toBe(1);
    expect(up.requests.map((r) => r.path)).toEqual(['/v2/app/manifests/latest']);
    up.reset();
    await h.request('GET', '/v2/p/app/manifests/stable');
    expect(up.count()).toBe(0); // stable keeps the rule's 1 h TTL
  });

  it('onUpstreamDelete: keep (default) serves a tag the upstream deleted', async () => {
    await setup();
    const img = seedImage(up, 'app', 'old', [Buffer.from('x')]);
    await pullAll('app', ['old']);
    up.deleteTag('app', 'old');
    h.clock.now += HOUR + 1;
    expect(await h.refresher.refreshDue()).toMatchObject({ checked: 1, gone: 1 });
    expect((await h.index.getTag('p/app', 'old'))?.lastCheck?.result).toBe('gone');
    const res = await h.request('GET', '/v2/p/app/manifests/old');
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
  });

  it('onUpstreamDelete: stop removes the tag; its manifest stays pullable by digest', async () => {
    await setup({ onUpstreamDelete: 'stop' });
    const img = seedImage(up, 'app', 'old', [Buffer.from('x')]);
    await pullAll('app', ['old']);
    up.deleteTag('app', 'old');
    h.clock.now += HOUR + 1;
    expect(await h.refresher.refreshDue()).toMatchObject({ checked: 1, gone: 1 });
    expect(await h.index.getTag('p/app', 'old')).toBeUndefined();
    expect((await h.request('GET', '/v2/p/app/manifests/old')).status).toBe(404);
    expect((await h.request('GET', `/v2/p/app/manifests/${img.digest}`)).status).toBe(200);
  });
});

describe('surviving upstream trouble on pull', () => {
  it('a slow upstream cannot make a cached pull slow: the re-check gives up after revalidateTimeoutSeconds', async () => {
    await setup({ revalidateTimeoutSeconds: 0.2 });
    const img = seedImage(up, 'app', 'latest', [Buffer.from('x')]);
    await pullAll('app', ['latest']);
    h.clock.now += HOUR + 1;
    up.faults.delayMs = 3000;
    const started = Date.now();
    const res = await h.request('GET', '/v2/p/app/manifests/latest');
    expect(Date.now() - started).toBeLessThan(1500);
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    up.faults.delayMs = 0;
  });

  it('revalidateTimeoutSeconds bounds the whole re-check: a moved manifest trickling in is fetched in the background', async () => {
    await setup({ revalidateTimeoutSeconds: 0.3 });
    const old = seedImage(up, 'app', 'latest', [Buffer.from('old')]);
    await pullAll('app', ['latest']);
    const moved = seedImage(up, 'app', 'latest', [Buffer.from('new')]);
    h.clock.now += HOUR + 1;
    up.reset();
    // The HEAD answers at once; the new manifest's GET sends 40 bytes every 100 ms (over a second in all).
    up.faults.slowBody = { kind: 'manifest', chunkBytes: 40, pauseMs: 100 };
    const [first, second] = await Promise.all([h.request('GET', '/v2/p/app/manifests/latest'), h.request('HEAD', '/v2/p/app/manifests/latest')]);
    expect(first.headers['Docker-Content-Digest']).toBe(old.digest);
    expect(h.bodyOf(first)!.equals(old.body)).toBe(true);
    expect(second.headers['Docker-Content-Digest']).toBe(old.digest);
    // One re-check for both pulls: a HEAD, and a GET of the moved digest.
    expect(up.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['HEAD /v2/app/manifests/latest', `GET /v2/app/manifests/${moved.digest}`]);
    // The fetch goes on in the background and moves the tag once the new manifest arrived and was verified.
    await eventually(async () => (await h.index.getTag('p/app', 'latest'))?.digest === moved.digest);
    expect(h.changes.map((c) => c.newDigest)).toEqual([moved.digest]);
    up.reset();
    const after = await h.request('GET', '/v2/p/app/manifests/latest');
    expect(after.headers['Docker-Content-Digest']).toBe(moved.digest);
    expect(up.count()).toBe(0);
  });

  it('a flapping upstream (down, up, down) never makes a cached tag change digest', async () => {
    await setup({ ttlSeconds: 0 });
    const img = seedImage(up, 'app', 'latest', [Buffer.from('x')]);
    await pullAll('app', ['latest']);
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) {
      up.faults.down = i % 2 === 0;
      up.faults.status = i % 3 === 1 ? { kind: 'manifest', code: 500 } : undefined;
      h.clock.now += 1000;
      seen.add((await h.request('GET', '/v2/p/app/manifests/latest')).headers['Docker-Content-Digest']);
    }
    expect([...seen]).toEqual([img.digest]);
  });

  it('remembers "does not exist" briefly instead of hammering the upstream', async () => {
    await setup({ negativeCacheSeconds: 60 });
    const absent = `sha256:${'e'.repeat(64)}`;
    const ask = async () => {
      expect((await h.request('GET', '/v2/p/app/manifests/nope')).status).toBe(404);
      expect((await h.request('GET', `/v2/p/app/manifests/${absent}`)).status).toBe(404);
    };
    for (let i = 0; i < 5; i++) await ask();
    expect(up.count({ kind: 'manifest' })).toBe(2); // one per reference
    // Briefly: still remembered just before negativeCacheSeconds, asked again once they passed (rule's clock).
    h.clock.now += 59_000;
    await ask();
    expect(up.count({ kind: 'manifest' })).toBe(2);
    h.clock.now += 2_000;
    await ask();
    expect(up.count({ kind: 'manifest' })).toBe(4);
    // Now the upstream has the tag: the next miss after the time is served it.
    const img = seedImage(up, 'app', 'nope', [Buffer.from('arrived')]);
    h.clock.now += 61_000;
    expect((await h.request('GET', '/v2/p/app/manifests/nope')).headers['Docker-Content-Digest']).toBe(img.digest);
  });
});
