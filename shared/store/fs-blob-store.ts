/**
 * Embedded blob store: content-addressed files under `<root>/blobs/<algorithm>/<hex>`. A write streams into
 * `<root>/tmp/`, hashing as it goes, fsyncs, and renames into place only when the digest (and size) match, so
 * a blob is visible whole or not at all. Memory stays flat whatever the blob size (stream backpressure).
 *
 * Clients get blobs through a signed, short-lived URL to the local server's own blob route
 * (`/_blobs/<algorithm>/<hex>?expires=<unix s>&signature=<hmac>`), so the registry handler answers a blob hit
 * with a 307 exactly as on AWS (where the URL is a presigned S3 GET).
 *
 * Stream while filling. Every write in progress is tracked (digest → temp file, bytes written so far, the
 * announced size, progress/verified/committed/failed events), so the local server can serve a blob to clients
 * while it is still arriving from the upstream: {@link FsBlobStore.openInProgress} tails the temp file as it grows.
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
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hasherFor, parseDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { BlobStore } from './ports.js';

/** Route prefix of the local server's blob endpoint. */
export const LOCAL_BLOB_ROUTE = '/_blobs/';

/** Bytes per read when tailing a write in progress (and the write-side buffer): 1 MiB, like the blob route. */
export const BLOB_READ_CHUNK = 1024 * 1024;
/** Default bound (ms) on waiting for a write in progress to make any progress. */
export const IN_PROGRESS_IDLE_MS = 60_000;

/** A blob being written right now (see "Stream while filling" above). */
export interface InProgressBlob {
  readonly digest: Digest;
  /** Size the writer was told to expect (the upstream's `Content-Length`), when known. Bytes. */
  readonly expectedSize?: number;
  /**
   * A reader of the blob from byte 0 that tails the temp file as it grows, reading at most {@link BLOB_READ_CHUNK}
   * at a time (memory stays bounded whatever the blob size). It ends once the bytes were verified; it is destroyed
   * with an error when the write fails or makes no progress for `idleMs` (default {@link IN_PROGRESS_IDLE_MS}).
   */
  read(opts?: { idleMs?: number }): Readable;
  /**
   * Resolves with the size once the blob is committed (verified, fsynced, renamed into place); rejects when the
   * write fails or makes no progress for `idleMs` (default {@link IN_PROGRESS_IDLE_MS}).
   */
  whenCommitted(opts?: { idleMs?: number }): Promise<number>;
}

/** The filesystem blob store plus what the local server needs to serve its signed URLs. */
export interface FsBlobStore extends BlobStore {
  /** Absolute path of a committed blob (whether or not it exists). */
  pathOf(digest: Digest): string;
  /**
   * Checks a `/_blobs/...` URL's path and query; returns the digest when the signature is valid and unexpired.
   */
  verifyUrl(path: string, query: URLSearchParams, nowSeconds?: number): Digest | undefined;
  /** The write of `digest` in progress in this process, or undefined (none, or already committed/failed). */
  openInProgress(digest: Digest): InProgressBlob | undefined;
  /**
   * Declares that whoever serves this store's URLs can serve blobs still being written (the local server does,
   * through {@link openInProgress}): sets {@link BlobStore.streamsWhileFilling}, so the registry answers a blob
   * miss as soon as the upstream started sending. Off by default: a server that cannot tail writes would 404.
   */
  enableStreamWhileFilling(): void;
}

type WriteState = 'writing' | 'verified' | 'committed' | 'failed';

/** Book-keeping of one write in progress. `bytesWritten` counts bytes already in the temp file. */
interface WriteEntry {
  digest: Digest;
  tmpPath: string;
  finalPath: string;
  expectedSize?: number;
  bytesWritten: number;
  state: WriteState;
  /** Set once the bytes hashed to the digest (the state may still move to committed, or to failed on fsync/rename). */
  verified: boolean;
  error?: Error;
  /** Resolves once the temp file exists (readers open it only then). */
  opened: Promise<void>;
  /** 'change' on every progress, verification, commit or failure. */
  events: EventEmitter;
}

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
 * Waits for the next 'change' of `entry`: resolves true on a change; after `ms` without one, rejects (`idle`) or
 * resolves false. `cancel` detaches early (for destroy) and resolves false.
 */
function nextChange(entry: WriteEntry, ms: number, onTimeout: 'idle' | 'resolve' = 'idle'): { promise: Promise<boolean>; cancel(): void } {
  let cancel = () => undefined as void;
  const promise = new Promise<boolean>((resolve, reject) => {
    const onChange = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      entry.events.off('change', onChange);
      if (onTimeout === 'resolve') resolve(false);
      else reject(new Error(`blob write in progress made no progress for ${ms} ms`));
    }, ms);
    entry.events.once('change', onChange);
    cancel = () => {
      clearTimeout(timer);
      entry.events.off('change', onChange);
      resolve(false);
    };
  });
  return { promise, cancel };
}

/**
 * A tail reader that caught up waits for at least this many new bytes (or {@link COALESCE_MS}, or the end)
 * before reading on: the upstream arrives in 64 KiB pieces, and sending each on its own costs about three
 * times the CPU of 1 MiB writes (the reason for the blob route's 1 MiB reads).
 */
const COALESCE_BYTES = 512 * 1024;
/** Longest a caught-up reader waits to gather {@link COALESCE_BYTES} (ms); latency stays negligible. */
const COALESCE_MS = 5;

/** How far a tail reader may read now (bytes), and whether that is the end of the blob. */
function readableLimit(entry: WriteEntry): { limit: number; final: boolean } {
  if (entry.verified) return { limit: entry.bytesWritten, final: true };
  // Hold back the last byte of a known-size blob until verification: a Content-Length body never completes for bad bytes.
  if (entry.expectedSize !== undefined) return { limit: Math.min(entry.bytesWritten, Math.max(0, entry.expectedSize - 1)), final: false };
  return { limit: entry.bytesWritten, final: false };
}

/** Tails a write in progress: reads what is in the temp file, waits for progress, ends after verification. */
class TailReader extends Readable {
  private fh?: FileHandle;
  private pos = 0;
  private pumping = false;
  private wait?: { cancel(): void };

  constructor(
    private readonly entry: WriteEntry,
    private readonly idleMs: number,
  ) {
    super({ highWaterMark: BLOB_READ_CHUNK });
  }

  override _construct(cb: (err?: Error | null) => void): void {
    const open = async () => {
      await this.entry.opened;
      try {
        this.fh = await fs.open(this.entry.tmpPath, 'r');
      } catch (err) {
        // Renamed into place meanwhile (the bytes are the same), or removed because the write failed.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        if (this.entry.state === 'failed') throw this.entry.error ?? new Error('blob write failed');
        this.fh = await fs.open(this.entry.finalPath, 'r');
      }
    };
    open().then(
      () => cb(),
      (err: unknown) => cb(err as Error),
    );
  }

  override _read(): void {
    if (this.pumping) return;
    this.pumping = true;
    this.pump().catch((err: unknown) => this.destroy(err as Error));
  }

  private async pump(): Promise<void> {
    for (;;) {
      if (this.destroyed) return;
      // A failed write cuts the reader off at once (unless its bytes were verified before fsync/rename failed).
      if (!this.entry.verified && this.entry.state === 'failed') throw this.entry.error ?? new Error('blob write failed');
      const { limit, final } = readableLimit(this.entry);
      if (this.pos < limit) {
        const len = Math.min(limit - this.pos, BLOB_READ_CHUNK);
        const buf = Buffer.allocUnsafe(len);
        const { bytesRead } = await this.fh!.read(buf, 0, len, this.pos);
        if (this.destroyed) return;
        if (bytesRead === 0) throw new Error('blob file is shorter than the bytes written');
        this.pos += bytesRead;
        if (!this.push(bytesRead === len ? buf : buf.subarray(0, bytesRead))) {
          this.pumping = false;
          return;
        }
        continue;
      }
      if (final) {
        this.push(null);
        return;
      }
      await this.waitForMore();
    }
  }

  /** Caught up: waits for progress (bounded by `idleMs`), then briefly gathers more (see {@link COALESCE_BYTES}). */
  private async waitForMore(): Promise<void> {
    await this.waitChange(this.idleMs, 'idle');
    const until = Date.now() + COALESCE_MS;
    for (;;) {
      if (this.destroyed || this.entry.state === 'failed') return;
      const { limit, final } = readableLimit(this.entry);
      const left = until - Date.now();
      if (final || limit - this.pos >= COALESCE_BYTES || left <= 0) return;
      if (!(await this.waitChange(left, 'resolve'))) return;
    }
  }

  private async waitChange(ms: number, onTimeout: 'idle' | 'resolve'): Promise<boolean> {
    const wait = nextChange(this.entry, ms, onTimeout);
    this.wait = wait;
    try {
      return await wait.promise;
    } finally {
      this.wait = undefined;
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.wait?.cancel();
    const fh = this.fh;
    this.fh = undefined;
    if (!fh) return cb(err);
    fh.close().then(
      () => cb(err),
      () => cb(err),
    );
  }
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
  // Leftovers of a crash are never visible (they are not at their final path); clear them.
  for (const f of await fs.readdir(join(root, 'tmp'))) await fs.rm(join(root, 'tmp', f), { force: true });

  const pathOf = (digest: Digest) => {
    const { algorithm, encoded } = parseDigest(digest)!;
    return join(root, 'blobs', algorithm, encoded);
  };
  const sign = (digest: Digest, expires: number) => createHmac('sha256', key).update(`${digest}\n${expires}`).digest('base64url');
  const inProgress = new Map<Digest, WriteEntry>();

  const store: FsBlobStore = {
    pathOf,
    async stat(digest) {
      try {
        const st = await fs.stat(pathOf(digest));
        return { size: st.size };
      } catch {
        return undefined;
      }
    },
    async write(digest, source: Readable, expectedSize) {
      const tmp = join(root, 'tmp', randomUUID());
      const hash = hasherFor(digest);
      let size = 0;
      let markOpened!: () => void;
      const entry: WriteEntry = {
        digest,
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
      }
    },
    openInProgress(digest) {
      const entry = inProgress.get(digest);
      if (!entry) return undefined;
      return {
        digest,
        expectedSize: entry.expectedSize,
        read: (opts = {}) => new TailReader(entry, opts.idleMs ?? IN_PROGRESS_IDLE_MS),
        async whenCommitted(opts = {}) {
          const idleMs = opts.idleMs ?? IN_PROGRESS_IDLE_MS;
          for (;;) {
            if (entry.state === 'committed') return entry.bytesWritten;
            if (entry.state === 'failed') throw entry.error ?? new Error('blob write failed');
            await nextChange(entry, idleMs).promise;
          }
        },
      };
    },
    enableStreamWhileFilling() {
      store.streamsWhileFilling = true;
    },
    async locate(digest) {
      const { algorithm, encoded } = parseDigest(digest)!;
      const expires = Math.floor(Date.now() / 1000) + ttl;
      return { kind: 'redirect', url: `${LOCAL_BLOB_ROUTE}${algorithm}/${encoded}?expires=${expires}&signature=${sign(digest, expires)}` };
    },
    verifyUrl(path, query, nowSeconds = Date.now() / 1000) {
      const m = /^\/_blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(path);
      if (!m) return undefined;
      const digest = `${m[1]}:${m[2]}`;
      if (!parseDigest(digest)) return undefined;
      const expires = Number(query.get('expires'));
      const signature = query.get('signature') ?? '';
      if (!Number.isInteger(expires) || expires < nowSeconds) return undefined;
      const want = Buffer.from(sign(digest as Digest, expires));
      const got = Buffer.from(signature);
      return want.length === got.length && timingSafeEqual(want, got) ? (digest as Digest) : undefined;
    },
  };
  return store;
}
