/**
 * The fill lease protocol (shared/registry/fill-lease.ts) through the registry: a failed fill dispatch releases
 * its lease and is retried, a stale lease (a dead or never-started fill) is taken over within seconds, a running
 * fill heartbeats and gives up once taken over, and a waiting request costs reads with backoff, no failed writes.
 * Dispatch failures are the harness's `failTimes` switch (a Lambda Invoke cannot be made to fail on demand here);
 * a slow upstream is the fake's `slowBody`.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { createHarness, silentLog } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { newLeaseOwner } from '../../shared/registry/fill-lease.js';

/** Owners of leases other processes took for fills of `p/app`. */
const ALIVE_ELSEWHERE = newLeaseOwner('p/app');
const FILLER_ELSEWHERE = newLeaseOwner('p/app');

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  vi.useRealTimers();
  await up?.close();
  await sleep(50);
  h?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const KiB = 1024;

async function setUp(extra: Parameters<typeof createHarness>[1] = {}, layer: Buffer = Buffer.from('a layer')) {
  up = await startFakeUpstream();
  h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 5 }, ...extra });
  const img = seedImage(up, 'app', 'v1', [layer]);
  return { layer, digest: img.layerDigests[0] as Digest, key: `blob:${img.layerDigests[0]}` };
}

/** Moves the heartbeat of the lease on `key` `ms` into the past, as if its holder had died that long ago. */
function ageLease(dbPath: string, key: string, ms: number): void {
  const db = new Database(dbPath);
  try {
    db.prepare('UPDATE leases SET heartbeat_at = heartbeat_at - ? WHERE key = ?').run(ms, key);
  } finally {
    db.close();
  }
}

describe('a failed fill dispatch (AWS Lambda Invoke)', () => {
  it('is retried: the Invoke fails once, the pull still gets the blob, one fill ran', async () => {
    const { layer, digest, key } = await setUp({ dispatchFill: { delayMs: 0, failTimes: 1 } });
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    expect(h.fillJobs).toHaveLength(1);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
    expect(await h.index.getLease(key)).toBeUndefined();
  });

  it('that keeps failing answers a retryable 503 (never 500) and releases the lease at once', async () => {
    const { digest, key } = await setUp({ dispatchFill: { delayMs: 0, failTimes: 3 } });
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.status).toBe(503);
    expect(h.jsonOf(res).errors[0].code).toBe('UNAVAILABLE');
    expect(res.headers['Retry-After']).toBe('1');
    expect(await h.index.getLease(key)).toBeUndefined();
    // The next request takes the lease and succeeds (the Invoke works again).
    const next = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(next.status).toBe(307);
    expect(next.headers.Location).toMatch(/^\/_blobs\//);
  });
});

describe('fills that keep failing on AWS', () => {
  it('a request dispatches at most two fills (the first and one retry), then answers 503, not a fill every backoff', async () => {
    const { digest, key } = await setUp({ dispatchFill: { delayMs: 0 } });
    up.faults.wrongBytes = true; // every fill fails its digest check
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.status).toBe(503);
    expect(h.jsonOf(res).errors[0].code).toBe('UNAVAILABLE');
    expect(h.fillJobs).toHaveLength(2);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(2);
    expect(up.count({ method: 'HEAD', kind: 'blob' })).toBe(1); // asked once whether the blob exists at all
    expect(await h.index.getLease(key)).toBeUndefined();
  });

  it('a blob the upstream does not have: the fill fails, the HEAD says 404, and the client gets BLOB_UNKNOWN at once', async () => {
    await setUp({ dispatchFill: { delayMs: 0 } });
    const missing = `sha256:${'4'.repeat(64)}`;
    const res = await h.request('GET', `/v2/p/app/blobs/${missing}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(h.fillJobs).toHaveLength(1);
  });
});

describe('a stale lease', () => {
  it('(a fill that died: kill -9, a crashed fill function) is taken over by the next request, long before it expires', async () => {
    const { layer, digest, key } = await setUp();
    expect(await h.index.acquireLease(key, 'killed-process', 900)).toBe(true);
    ageLease(h.dbPath, key, 11_000); // no heartbeat for 11 s (> staleLeaseSeconds 10)
    silentLog.lines.length = 0;
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.status).toBe(307);
    const takeover = silentLog.lines.find((l) => (l.extra[0] as { event?: string } | undefined)?.event === 'lease-takeover');
    expect(takeover?.extra[0]).toMatchObject({ name: 'p/app', digest });
    expect((takeover?.extra[0] as { heartbeatAgoMs: number }).heartbeatAgoMs).toBeGreaterThanOrEqual(11_000);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
    expect(await h.index.getLease(key)).toBeUndefined();
  });

  it('a fill dispatched for a lease that was taken over meanwhile does not start', async () => {
    const { digest, key } = await setUp();
    expect(await h.index.acquireLease(key, 'slow-to-start', 900)).toBe(true);
    ageLease(h.dbPath, key, 11_000);
    expect(await h.index.acquireLease(key, 'successor', 900, 10)).toBe(true);
    expect(await h.blobService.fill('p/app', digest, 'slow-to-start')).toBeUndefined();
    expect(up.count({ kind: 'blob' })).toBe(0);
    expect((await h.index.getLease(key))?.owner).toBe('successor');
  });

  it('a fresh lease is not taken over: the request waits and hops, no second download', async () => {
    const { digest, key } = await setUp({ blobFill: { waitSeconds: 0.3, maxHops: 3 } });
    expect(await h.index.acquireLease(key, ALIVE_ELSEWHERE, 900)).toBe(true);
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.headers.Location).toBe(`/v2/p/app/blobs/${digest}?pt-hop=1`);
    expect(up.count({ kind: 'blob' })).toBe(0);
    expect((await h.index.getLease(key))?.owner).toBe(ALIVE_ELSEWHERE);
  });
});

describe('a running fill', () => {
  it('heartbeats its lease while bytes arrive, and releases it when it commits', async () => {
    const { digest, key } = await setUp({ blobFill: { waitSeconds: 5, staleLeaseSeconds: 0.4 } }, randomBytes(640 * KiB));
    h.blobs.enableStreamWhileFilling();
    up.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 100 }; // about 1 s of body
    expect((await h.request('GET', `/v2/p/app/blobs/${digest}`)).status).toBe(307);
    const taken = (await h.index.getLease(key))!;
    const beats = new Set<number>();
    const filling = h.blobs.openInProgress(digest)!;
    const committed = filling.whenCommitted();
    for (let i = 0; i < 40 && !(await Promise.race([committed.then(() => true), sleep(50).then(() => false)])); i++) {
      const lease = await h.index.getLease(key);
      if (lease) beats.add(lease.heartbeatAt);
    }
    await committed;
    expect([...beats].some((t) => t > taken.heartbeatAt)).toBe(true);
    await sleep(20);
    expect(await h.index.getLease(key)).toBeUndefined();
  });

  it('taken over (its heartbeat finds another owner) gives up: upstream connection closed, temp file gone, readers cut', async () => {
    const { digest, key } = await setUp({ blobFill: { waitSeconds: 5, staleLeaseSeconds: 0.2 } }, randomBytes(1024 * KiB));
    h.blobs.enableStreamWhileFilling();
    up.faults.slowBody = { chunkBytes: 32 * KiB, pauseMs: 100 }; // about 3 s of body
    expect((await h.request('GET', `/v2/p/app/blobs/${digest}`)).status).toBe(307);
    const reader = h.blobs.openInProgress(digest)!.read();
    const read = new Promise<Error | undefined>((resolve) => {
      reader.on('data', () => undefined);
      reader.on('error', resolve);
      reader.on('end', () => resolve(undefined));
    });
    expect(await h.index.acquireLease(key, 'thief', 900, 0)).toBe(true);
    expect((await read)?.message).toMatch(/taken over/);
    expect(await h.blobs.stat(digest)).toBeUndefined();
    for (let i = 0; i < 50 && readdirSync(join(h.dir, 'tmp')).length > 0; i++) await sleep(20);
    expect(readdirSync(join(h.dir, 'tmp'))).toEqual([]);
    expect((await h.index.getLease(key))?.owner).toBe('thief'); // its release did not touch the new owner's lease
  });
});

describe('a miss racing a fill that just finished', () => {
  it('a fill that committed and released its lease after the request missed is not downloaded again', async () => {
    const { layer, digest } = await setUp();
    const getLease = h.index.getLease.bind(h.index);
    // Between the request's miss and its lease read, another fill for this name commits (and links) the blob and
    // releases its lease.
    vi.spyOn(h.index, 'getLease').mockImplementationOnce(async (key) => {
      await h.blobs.write(digest, Readable.from([layer]));
      await h.index.link('p/app', digest);
      return getLease(key);
    });
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    expect(up.count({ kind: 'blob' })).toBe(0);
    expect(h.storeCalls.filter((c) => c.method === 'acquireLease')).toEqual([]);
  });
});

describe('a request waiting for a fill held elsewhere', () => {
  it('reads with backoff: under 2 store requests per waited second, no lease writes while the fill is alive', async () => {
    const { layer, digest, key } = await setUp({ blobFill: { waitSeconds: 30 } });
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
    expect(await h.index.acquireLease(key, FILLER_ELSEWHERE, 900)).toBe(true);
    h.storeCalls.length = 0;
    let answered = false;
    const pending = h.request('GET', `/v2/p/app/blobs/${digest}`).finally(() => (answered = true));
    // Let its first steps (real file I/O) finish until it reads the lease, before the fake clock runs.
    for (const until = performance.now() + 5000; !h.storeCalls.some((c) => c.method === 'getLease') && performance.now() < until; ) {
      await new Promise((r) => setImmediate(r));
    }
    const WAITED_SECONDS = 20;
    for (let s = 0; s < WAITED_SECONDS; s++) {
      await vi.advanceTimersByTimeAsync(1000);
      expect(await h.index.heartbeatLease(key, FILLER_ELSEWHERE, 900)).toBe(true); // the filler is alive
    }
    expect(answered).toBe(false);
    const waitingCalls = h.storeCalls.length;
    // The filler (for this name) commits and links, then releases; the waiter notices within its longest sleep (2 s).
    await h.blobs.write(digest, Readable.from([layer]));
    await h.index.link('p/app', digest);
    await h.index.releaseLease(key, FILLER_ELSEWHERE);
    await vi.advanceTimersByTimeAsync(2000);
    const res = await pending;
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    const calls = h.storeCalls.map((c) => `${c.port}.${c.method}`);
    expect(waitingCalls).toBeLessThan(2 * WAITED_SECONDS);
    expect(calls.filter((c) => c === 'leases.acquireLease')).toEqual([]);
    expect(calls.filter((c) => c === 'leases.getLease').length).toBeGreaterThanOrEqual(10); // it did poll
    expect(up.count({ kind: 'blob' })).toBe(0);
    console.info(`waiter: ${waitingCalls} store requests in ${WAITED_SECONDS} waited seconds; ${calls.length} in all`);
  });
});
