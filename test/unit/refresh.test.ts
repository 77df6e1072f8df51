/**
 * The scheduled and forced refresh, against the counting in-process fake upstream. Rate limits and outages are the
 * fake's fault switches (a real registry cannot be made to answer 429 on demand). (The per-rule freshness policy and
 * pulls through upstream trouble: refresh-policy.test.ts.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { RETRY_AFTER_ERROR_MS } from '../../shared/registry/manifests.js';
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


describe('scheduled refresh', () => {
  it('re-checks every due tag with one HEAD; only a moved tag costs a GET; the old digest stays pullable', async () => {
    await setup();
    const old = seedImage(up, 'app', 'latest', [Buffer.from('old')]);
    seedImage(up, 'app', 'v1', [Buffer.from('v1')]);
    seedImage(up, 'app', 'v2', [Buffer.from('v2')]);
    await pullAll('app', ['latest', 'v1', 'v2']);
    const moved = seedImage(up, 'app', 'latest', [Buffer.from('new')]);
    h.clock.now += HOUR + 1;
    up.reset();

    const report = await h.refresher.refreshDue();
    expect(report).toMatchObject({ checked: 3, unchanged: 2, moved: 1, gone: 0, errors: 0, stoppedEarly: false });
    expect(up.count({ method: 'HEAD', kind: 'manifest' })).toBe(3);
    expect(up.count({ method: 'GET', kind: 'manifest' })).toBe(1);
    expect(up.requests.find((r) => r.method === 'GET')?.path).toBe(`/v2/app/manifests/${moved.digest}`);
    expect(h.changes).toEqual([{ rule: 'p', name: 'p/app', tag: 'latest', oldDigest: old.digest, newDigest: moved.digest }]);

    up.reset();
    const latest = await h.request('GET', '/v2/p/app/manifests/latest');
    expect(latest.headers['Docker-Content-Digest']).toBe(moved.digest);
    expect((await h.request('GET', `/v2/p/app/manifests/${old.digest}`)).status).toBe(200);
    expect(up.count()).toBe(0);
    // Nothing is due any more: a second pass asks the upstream nothing.
    expect((await h.refresher.refreshDue()).checked).toBe(0);
    expect(up.count()).toBe(0);
    const entry = await h.index.getTag('p/app', 'latest');
    expect(entry?.lastCheck).toMatchObject({ result: 'moved' });
    expect(entry?.dueAt).toBe(h.clock.now + HOUR);
  });

  it('reads only due tags: fresh ones are not touched', async () => {
    await setup();
    seedImage(up, 'app', 'a', [Buffer.from('a')]);
    await pullAll('app', ['a']);
    h.clock.now += HOUR / 2;
    seedImage(up, 'app', 'b', [Buffer.from('b')]);
    await pullAll('app', ['b']);
    h.clock.now += HOUR / 2 + 1; // a is due, b is not
    up.reset();
    const report = await h.refresher.refreshDue();
    expect(report.checked).toBe(1);
    expect(up.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['HEAD /v2/app/manifests/a']);
  });

  it('resumes where it stopped: a pass cut after 5 of 12 tags leaves 7 due, the next pass checks exactly those', async () => {
    await setup();
    const tags = Array.from({ length: 12 }, (_, i) => `t${String(i).padStart(2, '0')}`);
    for (const t of tags) seedImage(up, 'app', t, [Buffer.from(t)]);
    await pullAll('app', tags);
    h.clock.now += HOUR + 1;
    up.reset();
    const first = await h.refresher.refreshDue({ maxTags: 5 });
    expect(first).toMatchObject({ checked: 5, stoppedEarly: true });
    const second = await h.refresher.refreshDue();
    expect(second).toMatchObject({ checked: 7, stoppedEarly: false });
    const heads = up.requests.filter((r) => r.method === 'HEAD').map((r) => r.path.split('/').pop());
    expect(heads.sort()).toEqual(tags);
  });

  it('keeps to the rule\'s concurrency cap', async () => {
    await setup({ refreshConcurrency: 2 });
    const tags = Array.from({ length: 8 }, (_, i) => `t${i}`);
    for (const t of tags) seedImage(up, 'app', t, [Buffer.from(t)]);
    await pullAll('app', tags);
    h.clock.now += HOUR + 1;
    up.faults.delayMs = 40;
    up.reset();
    const report = await h.refresher.refreshDue();
    expect(report.checked).toBe(8);
    expect(up.maxInFlight).toBe(2);
  });

  it('waits out a 429 Retry-After and retries, recording nothing bad', async () => {
    await setup({}, { refresh: { maxRetryAfterSeconds: 5 } });
    const img = seedImage(up, 'app', 'latest', [Buffer.from('x')]);
    await pullAll('app', ['latest']);
    h.clock.now += HOUR + 1;
    up.reset();
    up.faults.status = { kind: 'manifest', method: 'HEAD', code: 429, retryAfter: '1', times: 1 };
    const started = Date.now();
    const report = await h.refresher.refreshDue();
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(report).toMatchObject({ checked: 1, unchanged: 1, errors: 0 });
    expect(up.count({ method: 'HEAD' })).toBe(2);
    expect((await h.index.getTag('p/app', 'latest'))?.digest).toBe(img.digest);
  });

  it('records an upstream error on the tag, keeps serving it, and moves it out of the due range', async () => {
    await setup();
    const img = seedImage(up, 'app', 'latest', [Buffer.from('x')]);
    await pullAll('app', ['latest']);
    h.clock.now += HOUR + 1;
    up.faults.down = true;
    const report = await h.refresher.refreshDue();
    expect(report).toMatchObject({ checked: 1, errors: 1 });
    const entry = await h.index.getTag('p/app', 'latest');
    expect(entry?.lastCheck).toMatchObject({ result: 'error', error: expect.stringContaining('503') });
    expect(entry?.digest).toBe(img.digest);
    expect((await h.request('GET', '/v2/p/app/manifests/latest')).headers['Docker-Content-Digest']).toBe(img.digest);
    // Out of the due range, but retried after 15 minutes rather than a whole TTL (1 h) later.
    expect(RETRY_AFTER_ERROR_MS).toBe(15 * 60 * 1000);
    expect(entry?.dueAt).toBe(h.clock.now + 15 * 60 * 1000);
    up.reset();
    h.clock.now += 15 * 60 * 1000 - 1;
    expect((await h.refresher.refreshDue()).checked).toBe(0);
    expect(up.count()).toBe(0);
    up.faults.down = false;
    h.clock.now += 60 * 1000; // 16 minutes after the failure: due again, long before the TTL's hour
    expect(await h.refresher.refreshDue()).toMatchObject({ checked: 1, unchanged: 1, errors: 0 });
    expect((await h.index.getTag('p/app', 'latest'))?.dueAt).toBe(h.clock.now + HOUR);
  });
});

describe('a refresh run that meets bad tags', () => {
  it('checks a tag with a TTL of 0 once per run, not in a loop', async () => {
    await setup({ ttlSeconds: 0 });
    seedImage(up, 'app', 'latest', [Buffer.from('x')]);
    await pullAll('app', ['latest']);
    h.clock.now += 1000;
    up.reset();
    const report = await h.refresher.refreshDue({ deadline: Date.now() + 2000 });
    expect(report.checked).toBe(1);
    expect(up.count({ method: 'HEAD' })).toBe(1);
  });

  it('records a moved manifest served with wrong bytes as an error, keeps serving the cached one, and finishes the run', async () => {
    await setup();
    const good = seedImage(up, 'app', 'a', [Buffer.from('a')]);
    seedImage(up, 'app', 'b', [Buffer.from('b')]);
    await pullAll('app', ['a', 'b']);
    seedImage(up, 'app', 'a', [Buffer.from('a2')]);
    h.clock.now += HOUR + 1;
    up.faults.wrongBytes = true;
    const report = await h.refresher.refreshDue();
    expect(report).toMatchObject({ checked: 2, errors: 1, unchanged: 1 });
    expect((await h.index.getTag('p/app', 'a'))?.lastCheck).toMatchObject({ result: 'error', error: expect.stringContaining('digest') });
    expect((await h.refresher.refreshDue()).checked).toBe(0); // moved out of the due range
    up.faults.wrongBytes = false;
    expect((await h.request('GET', '/v2/p/app/manifests/a')).headers['Docker-Content-Digest']).toBe(good.digest);
  });

  it('records a tag moved to something that is not a manifest (a login page) as an error and keeps the cached one', async () => {
    await setup();
    const good = seedImage(up, 'app', 'a', [Buffer.from('a')]);
    await pullAll('app', ['a']);
    up.putManifest('app', 'a', { body: Buffer.from('<html><body>Login</body></html>'), contentType: 'application/vnd.oci.image.manifest.v1+json', noDigestHeader: true });
    h.clock.now += HOUR + 1;
    expect(await h.refresher.refreshDue()).toMatchObject({ checked: 1, errors: 1, moved: 0 });
    expect(h.changes).toEqual([]);
    const entry = await h.index.getTag('p/app', 'a');
    expect(entry).toMatchObject({ digest: good.digest, lastCheck: { result: 'error' } });
    up.reset();
    const res = await h.request('GET', '/v2/p/app/manifests/a');
    expect(res.headers['Docker-Content-Digest']).toBe(good.digest);
    expect(up.count()).toBe(0); // the failed check moved the tag out of the due range for a while
  });

  it('gives up on a 429 whose Retry-After outlasts the run, without failing the run', async () => {
    await setup();
    seedImage(up, 'app', 'a', [Buffer.from('a')]);
    await pullAll('app', ['a']);
    h.clock.now += HOUR + 1;
    up.faults.status = { kind: 'manifest', method: 'HEAD', code: 429, retryAfter: '30' };
    const started = Date.now();
    const report = await h.refresher.refreshDue({ deadline: Date.now() + 2000 });
    expect(Date.now() - started).toBeLessThan(2000);
    expect(report).toMatchObject({ checked: 1, errors: 1 });
    expect((await h.index.getTag('p/app', 'a'))?.lastCheck?.error).toContain('429');
  });
});

describe('forced refresh', () => {
  it('re-checks one tag, a repository, or a whole rule now, due or not', async () => {
    await setup();
    for (const t of ['a', 'b']) seedImage(up, 'app', t, [Buffer.from(t)]);
    seedImage(up, 'other', 'x', [Buffer.from('x')]);
    await pullAll('app', ['a', 'b']);
    await pullAll('other', ['x']);
    up.reset();
    expect((await h.refresher.refreshTarget({ name: 'p/app', tag: 'a' })).checked).toBe(1);
    expect((await h.refresher.refreshTarget({ name: 'p/app' })).checked).toBe(2);
    expect((await h.refresher.refreshTarget({ name: 'p' })).checked).toBe(3);
    expect(up.count({ method: 'HEAD' })).toBe(6);
    expect(up.count({ method: 'GET' })).toBe(0);
  });
});
