/**
 * Embedded blob store: content-addressed files under `<root>/blobs/<algorithm>/<hex>`. A write streams into
 * `<root>/tmp/`, hashing as it goes, fsyncs, and renames into place only when the digest (and size) match, so
 * a blob is visible whole or not at all. Memory stays flat whatever the blob size (stream backpressure). Temp
 * files are named after their writer, so those of a writer killed mid-write are removed at the next open and by
 * GC while another process's writes in progress stay (fs-temp-files.ts).
 *
 * Clients get blobs through a signed, short-lived URL to the local server's own blob route
 * (`/_blobs/<algorithm>/<hex>?expires=<unix s>&signature=<hmac>`), so the registry handler answers a blob hit
 * with a 307 exactly as on AWS (where the URL is a presigned S3 GET). Signing and checking live in fs-blob-urls.ts.
 *
 * Stream while filling. Every write in progress is tracked (digest → temp file, bytes written so far, the
 * announced size, progress/verified/committed/failed events), so the local server can serve a blob to clients
 * while it is still arriving from the upstream: {@link FsBlobStore.openInProgress} tails the temp file as it grows
 * (the reader is in fs-blob-tail.ts).
 * The trade-off, the same one distribution's own proxy makes: bytes reach the client before the digest is
 * verified. What keeps that safe:
 * - the store still commits (renames into place) only bytes that hashed to the digest;
 * - a tail reader ends only after the bytes were verified; when the write fails (digest or size mismatch,
 *   upstream reset, stall) it is destroyed instead, so the client's connection is cut and it never sees a
 *   complete response. With a known size the reader also holds back the last byte until verification, so a
 *   `Content-Length` body can never be complete for bad bytes either (chunked bodies lack their final chunk);
 * - clients verify digests themselves.
 * A tail reader ends at verification rather than at the rename: verified bytes are correct whether or not the
 * fsync + rename that follow succeed, and the client need not wait for the fsync.
 * The registry uses this only when told the blob route can tail writes ({@link FsBlobStore.enableStreamWhileFilling},
 * called by the local server); otherwise blob GETs wait for the commit as before.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hasherFor, parseDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { BLOB_READ_CHUNK, openInProgressBlob, type InProgressBlob, type WriteEntry, type WriteState } from './fs-blob-tail.js';
import { signedBlobUrl, verifyBlobUrl } from './fs-blob-urls.js';
import { createFsBlobReaper } from './fs-blob-reaper.js';
import { newTempName, releaseTempName, removeAbandonedTemps } from './fs-temp-files.js';
import type { BlobReaper, BlobStore } from './ports.js';

export { LOCAL_BLOB_ROUTE } from './fs-blob-urls.js';
export { BLOB_READ_CHUNK, IN_PROGRESS_IDLE_MS, type InProgressBlob } from './fs-blob-tail.js';

/** How many committed writes' tokens are remembered for the URLs bound to them (a few hundred bytes each). */
export const COMMITTED_WRITES_KEPT = 10_000;

/** The filesystem blob store plus what the local server needs to serve its signed URLs. */
export interface FsBlobStore extends BlobStore, BlobReaper {
  /** Absolute path of a committed blob (whether or not it exists). */
  pathOf(digest: Digest): string;
  /** Absolute path of a blob's unpublished copy, kept for the grace period (see fs-blob-reaper.ts). */
  trashPathOf(digest: Digest): string;
  /**
   * Opens the blob a signed URL names: the committed file, else its unpublished copy in `trash/` (a URL handed
   * out before a GC unpublished it stays good for its lifetime; see fs-blob-reaper.ts). Undefined when neither
   * exists. The caller closes the handle; once open, a rename or removal of the file does not disturb reading.
   */
  openBlob(digest: Digest): Promise<FileHandle | undefined>;
  /**
   * Checks a `/_blobs/...` URL's path and query; returns the digest when the signature is valid and unexpired.
   */
  verifyUrl(path: string, query: URLSearchParams, nowSeconds?: number): Digest | undefined;
  /**
   * The write of `digest` in progress in this process, or undefined (none, or already committed/failed); with
   * `fill`, only the write a bound URL names.
   */
  openInProgress(digest: Digest, fill?: string): InProgressBlob | undefined;
  /** Whether the write a bound URL names (`fill`) committed lately (the last {@link COMMITTED_WRITES_KEPT}). */
  committedWrite(fill: string): boolean;
  /**
   * Declares that whoever serves this store's URLs can serve blobs still being written (the local server does,
   * through {@link openInProgress}): sets {@link BlobStore.streamsWhileFilling}, so the registry answers a blob
   * miss as soon as the upstream started sending. Off by default: a server that cannot tail writes would 404.
   */
  enableStreamWhileFilling(): void;
}

/**
 * Free space (bytes) a blob write must leave on the store's filesystem: room for SQLite's journal and the
 * filesystem's own metadata, so a blob that fits only to the last byte is refused up front (see `hasRoomFor`).
 */
export const FREE_SPACE_MARGIN_BYTES = 1024 * 1024;

/** Writes all of `bufs` at `position`, looping over short writes. */
async function writeAll(fh: FileHandle, bufs: Buffer[], position: number): Promise<number> {
  let pending = bufs.filter((b) => b.length > 0);
  let total = 0;
  while (pending.length) {
    const { bytesWritten } = pending.length === 1 ? await fh.write(pending[0], 0, pending[0].length, position) : await fh.writev(pending, position);
    if (bytesWritten === 0) throw new Error('blob write made no progress (0 bytes written)');
    total += bytesWritten;
    position += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of pending) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    pending = rest;
  }
  return total;
}

/**
 * Opens the store at `root`. `urlTtlSeconds` is the lifetime of the signed URLs (default 900 s, like the S3
 * presigned URLs); `signingKey` defaults to random bytes per process (URLs die with the process, which is fine
 * for URLs that live minutes).
 */
export async function openFsBlobStore(root: string, opts: { urlTtlSeconds?: number; signingKey?: Buffer } = {}): Promise<FsBlobStore> {
  const ttl = opts.urlTtlSeconds ?? 900;
  const key = opts.signingKey ?? randomBytes(32);
  await fs.mkdir(join(root, 'tmp'), { recursive: true });
  await fs.mkdir(join(root, 'blobs', 'sha256'), { recursive: true });
  await fs.mkdir(join(root, 'blobs', 'sha512'), { recursive: true });
  // Leftovers of a crash are never visible (they are not at their final path); clear those of dead writers only:
  // another process on the same data dir (the server, while a CLI command opens the store) may be writing.
  await removeAbandonedTemps(join(root, 'tmp'));

  const pathOf = (digest: Digest) => {
    const { algorithm, encoded } = parseDigest(digest)!;
    return join(root, 'blobs', algorithm, encoded);
  };
  const inProgress = new Map<Digest, WriteEntry>();
  // Tokens of the writes that committed lately (insertion order, bounded): a URL bound to one of them serves the
  // committed file; bound to a write that failed (or long forgotten), it serves nothing (503, the client retries).
  const committedWrites = new Set<string>();
  const rememberCommitted = (token: string) => {
    committedWrites.add(token);
    if (committedWrites.size > COMMITTED_WRITES_KEPT) committedWrites.delete(committedWrites.values().next().value!);
  };
  const reaper = createFsBlobReaper(root, pathOf);

  const store: FsBlobStore = {
    ...reaper,
    pathOf,
    async openBlob(digest) {
      for (const path of [pathOf(digest), reaper.trashPathOf(digest)]) {
        const fh = await fs.open(path).catch(() => undefined);
        if (fh) return fh;
      }
      return undefined;
    },
    async stat(digest) {
      try {
        const st = await fs.stat(pathOf(digest));
        return { size: st.size };
      } catch {
        return undefined;
      }
    },
    async write(digest, source: Readable, expectedSize) {
      const tmpName = newTempName();
      const tmp = join(root, 'tmp', tmpName);
      const hash = hasherFor(digest);
      let size = 0;
      let markOpened!: () => void;
      const entry: WriteEntry = {
        digest,
        token: randomUUID(),
        tmpPath: tmp,
        finalPath: pathOf(digest),
        expectedSize,
        bytesWritten: 0,
        state: 'writing',
        verified: false,
        opened: new Promise<void>((r) => (markOpened = r)),
        events: new EventEmitter(),
      };
      entry.events.setMaxListeners(0);
      // Registered synchronously, before the first await: a blob can be served from the moment write() is called.
      // A concurrent write of a digest already in progress is not tracked (the first one serves readers).
      const tracked = !inProgress.has(digest);
      if (tracked) inProgress.set(digest, entry);
      const settle = (state: WriteState, error?: Error) => {
        entry.state = state;
        if (error) entry.error = error;
        if (state === 'committed' || state === 'failed') {
          markOpened(); // readers waiting for the file see the outcome
          if (inProgress.get(digest) === entry) inProgress.delete(digest);
          if (state === 'committed') rememberCommitted(entry.token);
        }
        entry.events.emit('change');
      };
      const sink = new Writable({
        highWaterMark: BLOB_READ_CHUNK,
        writev(chunks, cb) {
          const bufs: Buffer[] = [];
          for (const { chunk } of chunks as Array<{ chunk: Buffer }>) {
            size += chunk.length;
            if (expectedSize !== undefined && size > expectedSize) return cb(new RegistryError('SIZE_INVALID', 'blob is larger than its descriptor'));
            hash.update(chunk);
            bufs.push(chunk);
          }
          const start = entry.bytesWritten;
          opening.then((fh) => writeAll(fh, bufs, start)).then(
            (n) => {
              entry.bytesWritten += n;
              entry.events.emit('written', start, bufs); // readers that caught up take them from memory
              entry.events.emit('change');
              cb();
            },
            (err: unknown) => cb(err as Error),
          );
        },
      });
      // The pipeline is attached before any await: a source already flowing (the upstream client watches its
      // 'data' for stalls) must not emit chunks nobody consumes. Writes wait for the file to be open.
      const opening = fs.open(tmp, 'wx');
      let closed = false;
      opening.then(
        () => markOpened(),
        (err: unknown) => {
          markOpened();
          sink.destroy(err as Error);
        },
      );
      try {
        await pipeline(source, sink);
        const fh = await opening;
        if (expectedSize !== undefined && size !== expectedSize) throw new RegistryError('SIZE_INVALID', 'blob size does not match its descriptor');
        const actual = `${parseDigest(digest)!.algorithm}:${hash.digest('hex')}`;
        if (actual !== digest) throw new RegistryError('DIGEST_INVALID', 'upstream blob did not match its digest', { status: 502 });
        entry.verified = true;
        settle('verified');
        await fh.sync();
        closed = true;
        await fh.close();
        await fs.rename(tmp, entry.finalPath);
        settle('committed');
        return { size };
      } catch (err) {
        settle('failed', err as Error);
        throw err;
      } finally {
        if (!closed) await opening.then((fh) => fh.close()).catch(() => undefined);
        await fs.rm(tmp, { force: true });
        releaseTempName(tmpName);
      }
    },
    async hasRoomFor(bytes) {
      // Space usable by this (unprivileged or not) process: blocks available × block size.
      const { bavail, bsize } = await fs.statfs(join(root, 'tmp'));
      return bavail * bsize >= bytes + FREE_SPACE_MARGIN_BYTES;
    },
    openInProgress(digest, fill) {
      const entry = inProgress.get(digest);
      return entry && (fill === undefined || entry.token === fill) ? openInProgressBlob(entry) : undefined;
    },
    committedWrite: (fill) => committedWrites.has(fill),
    enableStreamWhileFilling() {
      store.streamsWhileFilling = true;
    },
    async locate(digest) {
      // A blob still being written here is not verified yet: its URL is bound to this write, so it can never serve
      // bytes another write of the digest stores later (a failed fill's URL would otherwise serve another rule's
      // copy once committed: blob-confirm.ts). A committed blob's URL serves the digest, as on S3.
      const writing = store.streamsWhileFilling ? inProgress.get(digest) : undefined;
      return { kind: 'redirect', url: signedBlobUrl(key, digest, ttl, writing?.token) };
    },
    verifyUrl(path, query, nowSeconds = Date.now() / 1000) {
      return verifyBlobUrl(key, path, query, nowSeconds);
    },
  };
  return store;
}
