/**
 * The reader side of "stream while filling" (see fs-blob-store.ts): the book-keeping of one blob write in
 * progress ({@link WriteEntry}), and the {@link TailReader} that serves such a blob from byte 0 by tailing its temp
 * file as it grows — reading at most {@link BLOB_READ_CHUNK} at a time, holding back the last byte of a known-size
 * blob until verification, ending only after the bytes were verified and destroyed when the write fails or stalls.
 * A reader that has caught up with the writer takes the next bytes from memory as they are written (the writer's
 * `written` event carries the very buffers it just wrote to the file) instead of reading them back from the file:
 * a cold pull's bytes are then copied once less and cost no file reads (about a third of the fill's CPU). The same
 * limits apply to them; a reader that falls behind (its consumer is slower) goes back to the file.
 * {@link openInProgressBlob} wraps an entry as the {@link InProgressBlob} the local server's blob route consumes.
 */
import type { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.js';

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

export type WriteState = 'writing' | 'verified' | 'committed' | 'failed';

/** Book-keeping of one write in progress. `bytesWritten` counts bytes already in the temp file. */
export interface WriteEntry {
  digest: Digest;
  /** Names this write in the URLs handed out while it runs (random; fs-blob-store.ts `locate`). */
  token: string;
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
  /**
   * 'change' on every progress, verification, commit or failure; before each progress's 'change', 'written' with
   * the file offset and the buffers just written there (never modified afterwards).
   */
  events: EventEmitter;
}

/**
 * Waits for the next 'change' of `entry`: resolves true on a change; after `ms` without one, rejects (`idle`) or
 * resolves false. `cancel` detaches early (for destroy) and resolves false.
 */
export function nextChange(entry: WriteEntry, ms: number, onTimeout: 'idle' | 'resolve' = 'idle'): { promise: Promise<boolean>; cancel(): void } {
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
export class TailReader extends Readable {
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
      if (!(await this.waitForMore())) {
        this.pumping = false; // the consumer is behind: _read resumes the pump
        return;
      }
    }
  }

  /**
   * Caught up: waits for progress (bounded by `idleMs`), taking the bytes written meanwhile from memory when they
   * start where this reader is, gathering for up to {@link COALESCE_MS} until {@link COALESCE_BYTES} (see there), and
   * pushing them as one buffer within the readable limit. Bytes it does not take (a gap, past the limit, a reader
   * whose consumer fell behind) stay for the file reads of the pump.
   */
  private async waitForMore(): Promise<boolean> {
    const gathered: Buffer[] = [];
    let length = 0;
    // The writer's buffers, contiguous with what this reader has passed on (anything else is read from the file).
    const take = (start: number, bufs: Buffer[]) => {
      if (start !== this.pos + length) return;
      for (const b of bufs) gathered.push(b);
      length += bufs.reduce((n, b) => n + b.length, 0);
    };
    this.entry.events.on('written', take);
    try {
      await this.waitChange(this.idleMs, 'idle');
      const until = Date.now() + COALESCE_MS;
      for (;;) {
        if (this.destroyed || this.entry.state === 'failed') return true;
        const { limit, final } = readableLimit(this.entry);
        const left = until - Date.now();
        if (final || limit - this.pos >= COALESCE_BYTES || left <= 0) break;
        if (!(await this.waitChange(left, 'resolve'))) break;
      }
    } finally {
      this.entry.events.off('written', take);
    }
    if (this.destroyed || length === 0 || (!this.entry.verified && (this.entry.state as WriteState) === 'failed')) return true;
    // Only what the limit allows now (the last byte of a known-size blob waits for verification); the rest is read
    // from the file later, as is everything when this reader's consumer is behind.
    const n = Math.min(length, readableLimit(this.entry).limit - this.pos);
    if (n <= 0 || this.readableLength >= this.readableHighWaterMark) return true;
    const bytes = gathered.length === 1 ? gathered[0] : Buffer.concat(gathered, length);
    this.pos += n;
    return this.push(n === bytes.length ? bytes : bytes.subarray(0, n));
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

/** Wraps the write in progress `entry` as the {@link InProgressBlob} handed to the blob route. */
export function openInProgressBlob(entry: WriteEntry): InProgressBlob {
  return {
    digest: entry.digest,
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
}
