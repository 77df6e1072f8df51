/**
 * The `BlobStore` contract (shared/store/ports.ts), run against every adapter: the filesystem store (unit) and
 * the S3 store against s3rver (e2e). Real bytes: a real text file, a 12 MiB random blob (several multipart
 * parts at a 5 MiB part size), an empty blob, a sha512 blob; each fetched back through the location the store
 * hands out, whole and by range. Failed writes must leave nothing visible (no stat, no object).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { isRegistryError } from '../../shared/oci/errors.js';
import type { BlobReaper, BlobStore } from '../../shared/store/ports.js';

/** What an adapter's test supplies. */
export interface BlobStoreFixture {
  store: BlobStore;
  /** GETs a location's URL (absolute, or relative to the registry) with optional request headers. */
  fetchLocation(url: string, headers?: Record<string, string>): Promise<{ status: number; body: Buffer; headers: Headers }>;
  /** Every stored object/file, committed or not (to prove failed writes leave nothing behind). */
  listObjects?(): Promise<string[]>;
  close(): Promise<void>;
}

/** A real file present on Debian/Ubuntu hosts (about 35 KB). */
const REAL_FILE = '/usr/share/common-licenses/GPL-3';
const MiB = 1024 * 1024;

const digestOf = (bytes: Buffer, algorithm: 'sha256' | 'sha512' = 'sha256') =>
  `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}` as Digest;

/** A stream of `bytes` in 64 KiB chunks (like a socket delivers them). */
function chunked(bytes: Buffer, chunk = 64 * 1024): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (offset >= bytes.length) return void this.push(null);
      this.push(bytes.subarray(offset, offset + chunk));
      offset += chunk;
    },
  });
}

/** Pushes `bytes` (in 64 KiB chunks), then fails with `error` instead of ending. */
function failingAfter(bytes: Buffer, error: Error): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (offset >= bytes.length) return void setImmediate(() => this.destroy(error));
      this.push(bytes.subarray(offset, offset + 64 * 1024));
      offset += 64 * 1024;
    },
  });
}

/** Runs the contract; `open` is called once for the suite. */
export function describeBlobStoreContract(label: string, open: () => Promise<BlobStoreFixture>): void {
  describe(`BlobStore contract: ${label}`, () => {
    let f: BlobStoreFixture;
    const list = async () => (f.listObjects ? (await f.listObjects()).sort() : undefined);

    beforeAll(async () => {
      f = await open();
    });
    afterAll(async () => {
      await f?.close();
    });

    async function expectServed(digest: Digest, bytes: Buffer): Promise<void> {
      expect(await f.store.stat(digest)).toEqual({ size: bytes.length });
      const location = await f.store.locate(digest);
      expect(location.kind).toBe('redirect');
      const res = await f.fetchLocation(location.url);
      expect(res.status).toBe(200);
      expect(res.body.length).toBe(bytes.length);
      expect(res.body.equals(bytes)).toBe(true);
    }

    /** Runs a write that must fail and asserts nothing became visible. */
    async function expectNothingVisible(digest: Digest, write: () => Promise<unknown>): Promise<unknown> {
      const before = await list();
      const err = await write().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeDefined();
      expect(await f.store.stat(digest)).toBeUndefined();
      if (before) expect(await list()).toEqual(before);
      return err;
    }

    it('an unknown digest has no stat', async () => {
      expect(await f.store.stat(digestOf(randomBytes(16)))).toBeUndefined();
    });

    it('stores a real file and serves the same bytes from its location', async () => {
      const bytes = readFileSync(REAL_FILE);
      const digest = digestOf(bytes);
      expect(await f.store.write(digest, createReadStream(REAL_FILE), bytes.length)).toEqual({ size: bytes.length });
      await expectServed(digest, bytes);
    });

    it('stores a 12 MiB blob (several multipart parts) and serves it whole and by range', async () => {
      const bytes = randomBytes(12 * MiB);
      const digest = digestOf(bytes);
      expect(await f.store.write(digest, chunked(bytes), bytes.length)).toEqual({ size: bytes.length });
      await expectServed(digest, bytes);
      const { url } = await f.store.locate(digest);
      const ranged = await f.fetchLocation(url, { Range: 'bytes=10-19' });
      expect(ranged.status).toBe(206);
      expect(ranged.body.equals(bytes.subarray(10, 20))).toBe(true);
      expect(ranged.headers.get('content-range')).toBe(`bytes 10-19/${bytes.length}`);
      const tail = await f.fetchLocation(url, { Range: `bytes=${bytes.length - 5 * MiB - 3}-` });
      expect(tail.status).toBe(206);
      expect(tail.body.equals(bytes.subarray(bytes.length - 5 * MiB - 3))).toBe(true);
    });

    it('stores an empty blob', async () => {
      const bytes = Buffer.alloc(0);
      const digest = digestOf(bytes);
      expect(await f.store.write(digest, Readable.from([]), 0)).toEqual({ size: 0 });
      await expectServed(digest, bytes);
    });

    it('stores a blob under a sha512 digest', async () => {
      const bytes = randomBytes(300 * 1024);
      const digest = digestOf(bytes, 'sha512');
      expect(await f.store.write(digest, chunked(bytes))).toEqual({ size: bytes.length });
      await expectServed(digest, bytes);
    });

    it('rejects bytes that do not hash to the digest with DIGEST_INVALID, leaving nothing', async () => {
      const bytes = randomBytes(6 * MiB + 123);
      const claimed = digestOf(randomBytes(32));
      const err = await expectNothingVisible(claimed, () => f.store.write(claimed, chunked(bytes), bytes.length));
      expect(isRegistryError(err, 'DIGEST_INVALID')).toBe(true);
      expect(await f.store.stat(digestOf(bytes))).toBeUndefined();
    });

    it('rejects a blob larger than expectedSize with SIZE_INVALID, leaving nothing', async () => {
      const bytes = randomBytes(6 * MiB);
      const digest = digestOf(bytes);
      const err = await expectNothingVisible(digest, () => f.store.write(digest, chunked(bytes), 1024 * 1024));
      expect(isRegistryError(err, 'SIZE_INVALID')).toBe(true);
    });

    it('rejects a blob shorter than expectedSize with SIZE_INVALID, leaving nothing', async () => {
      const bytes = randomBytes(100 * 1024);
      const digest = digestOf(bytes);
      const err = await expectNothingVisible(digest, () => f.store.write(digest, chunked(bytes), bytes.length + 1));
      expect(isRegistryError(err, 'SIZE_INVALID')).toBe(true);
    });

    it('rethrows the error of a source that fails half-way, leaving nothing', async () => {
      const full = randomBytes(12 * MiB);
      const digest = digestOf(full);
      const boom = new Error('upstream connection reset');
      const err = await expectNothingVisible(digest, () => f.store.write(digest, failingAfter(full.subarray(0, 6 * MiB), boom), full.length));
      expect(err).toBe(boom);
    });

    it('accepts a second write of the same digest (idempotent)', async () => {
      const bytes = randomBytes(700 * 1024);
      const digest = digestOf(bytes);
      expect(await f.store.write(digest, chunked(bytes))).toEqual({ size: bytes.length });
      expect(await f.store.write(digest, chunked(bytes), bytes.length)).toEqual({ size: bytes.length });
      await expectServed(digest, bytes);
    });

    it('keeps a committed blob intact when a later write of its digest carries wrong bytes', async () => {
      const good = randomBytes(6 * MiB + 5);
      const digest = digestOf(good);
      await f.store.write(digest, chunked(good));
      const bad = Buffer.from(good);
      bad[bad.length - 1] ^= 0xff;
      const err = await f.store.write(digest, chunked(bad), bad.length).catch((e: unknown) => e);
      expect(isRegistryError(err, 'DIGEST_INVALID')).toBe(true);
      await expectServed(digest, good);
    });

    describe('BlobReaper (the garbage collector\'s view)', () => {
      const reaper = () => f.store as BlobStore & BlobReaper;
      const listed = async (digest: Digest) => {
        const out = [];
        for await (const b of reaper().listStoredBlobs()) if (b.digest === digest) out.push(b);
        return out;
      };

      it('unpublish hides a blob from new pulls, a location handed out before still serves it; republish; remove the object', async (ctx) => {
        if (!('unpublishBlob' in f.store)) ctx.skip();
        const bytes = randomBytes(300 * 1024);
        const digest = digestOf(bytes);
        await f.store.write(digest, chunked(bytes), bytes.length);
        expect((await listed(digest)).map((b) => [b.state, b.size])).toEqual([['committed', bytes.length]]);
        const handedOut = await f.store.locate(digest);
        const at = Date.now() - 5000;
        expect(await reaper().unpublishBlob(digest, at)).toBe(true);
        expect(await reaper().unpublishBlob(digest, at)).toBe(false);
        expect(await f.store.stat(digest)).toBeUndefined();
        const stale = await f.fetchLocation(handedOut.url);
        expect(stale.status).toBe(200);
        expect(stale.body.equals(bytes)).toBe(true);
        expect(await listed(digest)).toEqual([{ digest, size: bytes.length, state: 'unpublished', since: at }]);
        expect(await reaper().storedBlob(digest)).toEqual({ digest, size: bytes.length, state: 'unpublished', since: at });
        expect(await reaper().republishBlob(digest)).toBe(true);
        await expectServed(digest, bytes);
        const read = reaper().readBlob(digest);
        const chunks: Buffer[] = [];
        for await (const c of (await read)!) chunks.push(c as Buffer);
        expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
        await reaper().unpublishBlob(digest, at);
        await reaper().removeBlobObject(digest);
        expect(await listed(digest)).toEqual([]);
        expect(await reaper().storedBlob(digest)).toBeUndefined();
        expect((await f.fetchLocation(handedOut.url)).status).not.toBe(200);
        expect(await reaper().republishBlob(digest)).toBe(false);
        expect(await reaper().readBlob(digest)).toBeUndefined();
      });

      it('a refill after unpublish is served, and removing the unpublished copy leaves it alone; dropBlob removes it', async (ctx) => {
        if (!('unpublishBlob' in f.store)) ctx.skip();
        const bytes = randomBytes(64 * 1024);
        const digest = digestOf(bytes);
        await f.store.write(digest, chunked(bytes), bytes.length);
        await reaper().unpublishBlob(digest, Date.now());
        await f.store.write(digest, chunked(bytes), bytes.length);
        await reaper().removeBlobObject(digest);
        await expectServed(digest, bytes);
        expect((await listed(digest)).map((b) => b.state)).toEqual(['committed']);
        await reaper().dropBlob(digest);
        expect(await f.store.stat(digest)).toBeUndefined();
        expect(await listed(digest)).toEqual([]);
      });

      it('lists stored blobs in digest order, resuming after a digest', async (ctx) => {
        if (!('unpublishBlob' in f.store)) ctx.skip();
        const all: Digest[] = [];
        for await (const b of reaper().listStoredBlobs()) all.push(b.digest);
        expect(all.length).toBeGreaterThan(3);
        expect([...all].sort()).toEqual(all);
        const rest: Digest[] = [];
        for await (const b of reaper().listStoredBlobs(all[1])) rest.push(b.digest);
        expect(rest).toEqual(all.slice(2));
      });
    });
  });
}
