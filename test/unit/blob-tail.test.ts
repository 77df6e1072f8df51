/**
 * The tail reader of a blob still being written (shared/store/fs-blob-tail.ts) holds back the last byte of a
 * known-size blob until the bytes are verified: a source that has sent all N bytes but not ended leaves the
 * reader at N−1 bytes, so a `Content-Length` response can never be complete for bytes that may still turn out
 * wrong. The source here is a PassThrough the test writes into: the real upstream cannot be paused at N bytes.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fsPromises, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { sha256Digest } from '../../shared/oci/digest.js';
import { openFsBlobStore, type FsBlobStore } from '../../shared/store/fs-blob-store.js';
import { eventually } from '../support/eventually.js';

const N = 300 * 1024 + 17;
let dir: string;
let store: FsBlobStore;
beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'pt-blob-tail-'));
  store = await openFsBlobStore(dir);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Bytes in the store's temp files (the write in progress). */
const bytesOnDisk = () => readdirSync(join(dir, 'tmp')).reduce((sum, f) => sum + statSync(join(dir, 'tmp', f)).size, 0);

/** Collects what `reader` delivers; `ended`/`error` say how it finished. */
function collect(reader: Readable) {
  const got = { chunks: [] as Buffer[], length: 0, ended: false, error: undefined as Error | undefined };
  reader.on('data', (c: Buffer) => {
    got.chunks.push(c);
    got.length += c.length;
  });
  reader.on('end', () => (got.ended = true));
  reader.on('error', (err) => (got.error = err));
  return got;
}

/**
 * Starts a write of `sent` (announced as N bytes, under the digest of `good`), sends all of it without ending the
 * source, and waits until all N bytes are on disk and the reader caught up as far as it may.
 */
async function allSentNotEnded(good: Buffer, sent: Buffer) {
  const source = new PassThrough();
  const writing = store.write(sha256Digest(good), source, N);
  writing.catch(() => undefined);
  const reader = store.openInProgress(sha256Digest(good))!.read({ idleMs: 10_000 });
  const got = collect(reader);
  source.write(sent);
  await eventually(() => bytesOnDisk() === N && got.length >= N - 1);
  // Every byte is written; give a reader that would pass the last one on every chance to do so.
  await sleep(200);
  return { source, writing, got };
}

describe('a reader of a known-size blob still being written', () => {
  it('has delivered at most N−1 bytes while the source sent all N but has not ended; the last once verified', async () => {
    const bytes = randomBytes(N);
    const { source, writing, got } = await allSentNotEnded(bytes, bytes);
    expect(got.length).toBe(N - 1);
    expect(got.ended).toBe(false);
    source.end();
    expect(await writing).toEqual({ size: N });
    await eventually(() => got.ended || got.error !== undefined);
    expect(got.error).toBeUndefined();
    expect(Buffer.concat(got.chunks).equals(bytes)).toBe(true);
  });

  it('never delivers the last byte of bytes that fail verification: it errors at N−1', async () => {
    const bytes = randomBytes(N);
    const wrong = Buffer.from(bytes);
    wrong[N - 1] ^= 0xff; // only the last byte differs
    const { source, writing, got } = await allSentNotEnded(bytes, wrong);
    expect(got.length).toBe(N - 1);
    source.end();
    await expect(writing).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
    await eventually(() => got.ended || got.error !== undefined);
    expect(got.ended).toBe(false);
    expect(got.error).toBeDefined();
    expect(got.length).toBe(N - 1);
    expect(await store.stat(sha256Digest(bytes))).toBeUndefined();
  });
});

describe('a reader that caught up with the writer', () => {
  /** Counts reads through file handles opened for reading (the tail reader's), from now until `restore`. */
  function countFileReads() {
    let reads = 0;
    let opened = 0;
    const open = fsPromises.open.bind(fsPromises);
    const spy = vi.spyOn(fsPromises, 'open').mockImplementation(async (...args: Parameters<typeof fsPromises.open>) => {
      const fh = await open(...args);
      if (args[1] === 'r') {
        opened++;
        const read = fh.read.bind(fh) as (...a: unknown[]) => unknown;
        (fh as unknown as { read: unknown }).read = (...a: unknown[]) => {
          reads++;
          return read(...a);
        };
      }
      return fh;
    });
    return { reads: () => reads, opened: () => opened, restore: () => spy.mockRestore() };
  }

  it('takes the bytes from memory as they are written: no file read (but the held-back last byte)', async () => {
    const counter = countFileReads();
    try {
      for (const announced of [N, undefined]) {
        const bytes = randomBytes(N);
        const source = new PassThrough();
        const before = counter.reads();
        const writing = store.write(sha256Digest(bytes), source, announced);
        const opens = counter.opened();
        const got = collect(store.openInProgress(sha256Digest(bytes))!.read({ idleMs: 10_000 }));
        await eventually(() => counter.opened() > opens); // the reader is open and waiting before the first byte
        await new Promise((r) => setImmediate(r));
        for (let off = 0; off < N; off += 64 * 1024) {
          source.write(bytes.subarray(off, off + 64 * 1024));
          await eventually(() => got.length >= Math.min(N, off + 64 * 1024) - 1);
        }
        source.end();
        await writing;
        await eventually(() => got.ended);
        expect(Buffer.concat(got.chunks).equals(bytes)).toBe(true);
        // A known size holds its last byte back until verification: that one byte comes from the file.
        expect(counter.reads() - before).toBe(announced === undefined ? 0 : 1);
      }
    } finally {
      counter.restore();
    }
  });

  it('a reader whose consumer is behind reads the bytes it missed from the file', async () => {
    const counter = countFileReads();
    try {
      const size = 3 * 1024 * 1024;
      const bytes = randomBytes(size);
      const source = new PassThrough();
      const writing = store.write(sha256Digest(bytes), source, size);
      const reader = store.openInProgress(sha256Digest(bytes))!.read({ idleMs: 10_000 });
      reader.pause(); // nobody reads: its buffer fills (1 MiB) and the rest stays in the file
      source.end(bytes);
      await writing;
      const got = collect(reader);
      reader.resume();
      await eventually(() => got.ended);
      expect(Buffer.concat(got.chunks).equals(bytes)).toBe(true);
      expect(counter.reads()).toBeGreaterThan(0);
    } finally {
      counter.restore();
    }
  });
});
