/**
 * Stream while filling (embedded backend): a blob miss is answered with the signed location as soon as the
 * upstream started sending, and the store's in-progress reader (what the local server's `/_blobs/` route
 * streams) tails the temp file while the fill runs. The upstream's slow body, wrong bytes and 404 are switches
 * on the in-process fake (`slowBody`, `wrongBytes`, no such blob); a real registry cannot be made to do them
 * on demand. The HTTP side (Content-Length, cut connections, Range waiting for the commit) is in
 * test/e2e/pull.e2e.test.ts against the real server.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { Readable as NodeReadable } from 'node:stream';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  await up?.close();
  // Let fills cut off by the upstream's close settle before the data dir goes.
  await sleep(50);
  h?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const KiB = 1024;

async function setUp(blobFill: { waitSeconds?: number } = { waitSeconds: 5 }) {
  up = await startFakeUpstream();
  h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill });
  h.blobs.enableStreamWhileFilling();
}

/** Reads a stream to its end or its error; `firstByteAt` is the wall clock of the first chunk. */
async function drain(stream: Readable): Promise<{ bytes: Buffer; error?: Error; firstByteAt?: number; committedAtFirstByte?: boolean; digest?: Digest }> {
  const chunks: Buffer[] = [];
  let firstByteAt: number | undefined;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      firstByteAt ??= Date.now();
      chunks.push(chunk);
    }
    return { bytes: Buffer.concat(chunks), firstByteAt };
  } catch (err) {
    return { bytes: Buffer.concat(chunks), error: err as Error, firstByteAt };
  }
}

/** Waits (bounded) until `check` holds. */
async function eventually(check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(20);
  }
}

/** GETs the blob through the registry and opens the in-progress reader behind its location. */
async function getWhileFilling(digest: string) {
  const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
  expect(res.status).toBe(307);
  expect(res.headers.Location).toMatch(/^\/_blobs\/sha256\//);
  const [path, query] = res.headers.Location.split('?');
  expect(h.blobs.verifyUrl(path, new URLSearchParams(query))).toBe(digest);
  return { res, filling: h.blobs.openInProgress(digest as Digest) };
}

describe('stream while filling: the registry answers a miss before the fill commits', () => {
  it('streams exactly the blob bytes to a reader during the fill; the first byte arrives before the commit', async () => {
    await setUp();
    const layer = randomBytes(640 * KiB);
    const img = seedImage(up, 'app', 'v1', [layer]);
    const digest = img.layerDigests[0] as Digest;
    up.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 40 }; // ~400 ms of body
    const { filling } = await getWhileFilling(digest);
    expect(await h.blobs.stat(digest)).toBeUndefined(); // answered before the commit
    expect(filling).toBeDefined();
    expect(filling!.expectedSize).toBe(layer.length);
    let committedAtFirstByte: boolean | undefined;
    const reader = filling!.read();
    reader.once('data', () => {
      committedAtFirstByte = h.blobs.openInProgress(digest) === undefined;
    });
    const got = await drain(reader);
    expect(got.error).toBeUndefined();
    expect(committedAtFirstByte).toBe(false);
    expect(got.bytes.length).toBe(layer.length);
    expect(sha(got.bytes)).toBe(digest);
    expect(await filling!.whenCommitted()).toBe(layer.length);
    expect(await h.blobs.stat(digest)).toEqual({ size: layer.length });
    await eventually(() => h.index.isLinked('p/app', digest)); // the fill links right after its commit
    expect(readdirSync(join(h.dir, 'tmp'))).toEqual([]);
    // Once committed, a GET is an ordinary hit.
    const again = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(h.readLocation(again.headers.Location).equals(layer)).toBe(true);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('streams a blob whose upstream sends no Content-Length (size unknown until the end)', async () => {
    await setUp();
    const layer = randomBytes(300 * KiB + 7);
    const img = seedImage(up, 'app', 'v1', [layer]);
    up.faults.slowBody = { chunkBytes: 50 * KiB, pauseMs: 20, noLength: true };
    const { filling } = await getWhileFilling(img.layerDigests[0]);
    expect(filling!.expectedSize).toBeUndefined();
    const got = await drain(filling!.read());
    expect(got.error).toBeUndefined();
    expect(got.bytes.equals(layer)).toBe(true);
  });

  it('wrong bytes upstream: the reader errors short of the full blob, nothing is committed, the tmp dir is empty', async () => {
    await setUp();
    const layer = randomBytes(256 * KiB);
    const img = seedImage(up, 'app', 'v1', [layer]);
    const digest = img.layerDigests[0] as Digest;
    up.faults.wrongBytes = true;
    up.faults.slowBody = { chunkBytes: 32 * KiB, pauseMs: 15 };
    const { filling } = await getWhileFilling(digest);
    const got = await drain(filling!.read());
    expect(got.error).toBeDefined();
    expect(got.error!.message).toMatch(/digest/);
    // With a known size the last byte is held back until verification: the body can never be complete.
    expect(got.bytes.length).toBeLessThan(layer.length);
    await expect(filling!.whenCommitted()).rejects.toThrow(/digest/);
    expect(await h.blobs.stat(digest)).toBeUndefined();
    expect(h.blobs.openInProgress(digest)).toBeUndefined();
    expect(readdirSync(join(h.dir, 'blobs', 'sha256'))).toEqual([]);
    await eventually(() => readdirSync(join(h.dir, 'tmp')).length === 0);
    // A later GET starts a new fill (and, the upstream fixed, gets the right bytes).
    up.faults.wrongBytes = false;
    const retry = await getWhileFilling(digest);
    const good = retry.filling ? await drain(retry.filling.read()) : { bytes: h.readLocation(retry.res.headers.Location) };
    expect(good.bytes.equals(layer)).toBe(true);
  });

  it('wrong bytes without Content-Length: the reader still errors instead of ending', async () => {
    await setUp();
    const layer = randomBytes(128 * KiB);
    const img = seedImage(up, 'app', 'v1', [layer]);
    up.faults.wrongBytes = true;
    up.faults.slowBody = { chunkBytes: 32 * KiB, pauseMs: 10, noLength: true };
    const { filling } = await getWhileFilling(img.layerDigests[0]);
    const got = await drain(filling!.read());
    expect(got.error).toBeDefined();
    expect(readdirSync(join(h.dir, 'blobs', 'sha256'))).toEqual([]);
    await eventually(() => readdirSync(join(h.dir, 'tmp')).length === 0);
  });

  it('concurrent readers each get the full bytes from one upstream GET', async () => {
    await setUp();
    const layer = randomBytes(512 * KiB);
    const img = seedImage(up, 'app', 'v1', [layer]);
    const digest = img.layerDigests[0] as Digest;
    up.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 30 };
    const results = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        await sleep(i * 40); // readers join at different points of the fill
        const { res, filling } = await getWhileFilling(digest);
        return filling ? drain(filling.read()) : { bytes: h.readLocation(res.headers.Location) };
      }),
    );
    for (const r of results) {
      expect((r as { error?: Error }).error).toBeUndefined();
      expect(r.bytes.equals(layer)).toBe(true);
    }
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('answers BLOB_UNKNOWN at once when the upstream has no such blob, and an error for a 5xx', async () => {
    await setUp({ waitSeconds: 5 });
    const started = Date.now();
    const res = await h.request('GET', `/v2/p/app/blobs/sha256:${'3'.repeat(64)}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(Date.now() - started).toBeLessThan(2000);
    expect(h.blobs.openInProgress(`sha256:${'3'.repeat(64)}`)).toBeUndefined();

    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    up.faults.status = { kind: 'blob', code: 500 };
    const t1 = Date.now();
    const failed = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(failed.status).toBeGreaterThanOrEqual(500);
    expect(Date.now() - t1).toBeLessThan(4000);
    expect(h.blobs.openInProgress(img.layerDigests[0] as Digest)).toBeUndefined();
  });

  it('still redirects back with a hop while the upstream has not answered at all', async () => {
    await setUp({ waitSeconds: 0.1 });
    const img = seedImage(up, 'app', 'v1', [Buffer.from('late headers')]);
    up.faults.delayMs = 500; // headers come late: nothing to stream yet
    const first = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(first.headers.Location).toBe(`/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=1`);
    await sleep(700);
    const second = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}?pt-hop=1`);
    expect(second.headers.Location).toMatch(/^\/_blobs\//);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('HEAD still answers the committed size (the upstream HEAD gives it without a fill)', async () => {
    await setUp();
    const layer = randomBytes(64 * KiB);
    const img = seedImage(up, 'app', 'v1', [layer]);
    const head = await h.request('HEAD', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(head.status).toBe(200);
    expect(head.headers['Content-Length']).toBe(String(layer.length));
  });

  it('without the capability the GET waits for the commit as before', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 5 } });
    const layer = randomBytes(128 * KiB);
    const img = seedImage(up, 'app', 'v1', [layer]);
    up.faults.slowBody = { chunkBytes: 32 * KiB, pauseMs: 20 };
    const res = await h.request('GET', `/v2/p/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
  });
});

describe('FsBlobStore.openInProgress', () => {
  it('is undefined for a digest not being written, and reader waits are bounded', async () => {
    await setUp();
    expect(h.blobs.openInProgress(`sha256:${'4'.repeat(64)}`)).toBeUndefined();
    const bytes = randomBytes(100 * KiB);
    const digest = sha(bytes) as Digest;
    // A source that sends half, then stalls: the reader gives up after its idle limit.
    let pushed = false;
    const source = new NodeReadable({
      read() {
        if (!pushed) {
          pushed = true;
          this.push(bytes.subarray(0, 50 * KiB));
        }
      },
    });
    const writing = h.blobs.write(digest, source, bytes.length);
    const filling = h.blobs.openInProgress(digest)!;
    expect(filling).toBeDefined();
    const started = Date.now();
    const got = await drain(filling.read({ idleMs: 200 }));
    expect(got.error?.message).toMatch(/no progress/);
    expect(got.bytes.length).toBe(50 * KiB);
    expect(Date.now() - started).toBeLessThan(2000);
    await expect(filling.whenCommitted({ idleMs: 100 })).rejects.toThrow(/no progress/);
    source.destroy(new Error('stalled source dropped'));
    await expect(writing).rejects.toThrow(/stalled source dropped/);
    expect(h.blobs.openInProgress(digest)).toBeUndefined();
    await eventually(() => readdirSync(join(h.dir, 'tmp')).length === 0);
  });

  it('a reader opened after the bytes were verified still reads the whole blob (renamed file)', async () => {
    await setUp();
    const bytes = randomBytes(2 * 1024 * KiB + 3);
    const digest = sha(bytes) as Digest;
    const writing = h.blobs.write(digest, NodeReadable.from([bytes.subarray(0, KiB), bytes.subarray(KiB)]), bytes.length);
    const filling = h.blobs.openInProgress(digest)!;
    await writing; // committed: the temp file was renamed into place
    const got = await drain(filling.read());
    expect(got.error).toBeUndefined();
    expect(got.bytes.equals(bytes)).toBe(true);
  });
});
