/**
 * The storage sweeps of a GC pass (gc.ts has the design): every stored blob object, then (on stores that keep
 * them apart from the index: DynamoDB + S3) every large manifest body. Both are paged, resumable from the pass
 * state's cursor, and stop at the deadline.
 */
import pLimit from 'p-limit';
import type { Digest } from '../../oci/digest.js';
import type { StoredBlob } from '../../store/ports.js';
import { unpublishIfUnreferenced, withBlobLease, type Collector, type Counts } from './collect.js';

/** State saved between runs of one pass (lifecycle state `gc`). Bytes. */
export interface PassState {
  startedAt: number;
  phase: 'repositories' | 'blobs' | 'bodies' | 'budgets';
  cursor?: string;
  manifestBytes: Record<string, number>;
  blobBytes: Record<string, number>;
  totalBlobBytes: number;
  pendingBytes: number;
  counts: Counts;
}

/** Items between two saves of the pass state. */
export const SAVE_EVERY = 500;

/** How a sweep runs: objects written at or after `graceFrom` (ms) are left alone; `stopped()` is the deadline. */
export interface SweepOptions {
  graceFrom: number;
  stopped(): boolean;
  save(): Promise<void>;
}

const add = (m: Record<string, number>, k: string, v: number) => void (m[k] = (m[k] ?? 0) + v);

/**
 * Every stored blob object after `state.cursor`: a committed one nothing references (and committed before
 * `graceFrom`) is unpublished; an unpublished one or an orphan older than `graceFrom` loses its object (under the
 * digest's fill lease); referenced bytes are counted per rule. True when the listing was finished.
 */
export async function sweepBlobs(c: Collector, state: PassState, opts: SweepOptions & { concurrency: number }): Promise<boolean> {
  const { graceFrom } = opts;
  const limit = pLimit(opts.concurrency);
  const removeObject = async (digest: Digest, expected: StoredBlob['state']) => {
    await withBlobLease(c, digest, async (held) => {
      const now = await c.reaper.storedBlob(digest);
      if (now?.state !== expected || now.since >= graceFrom) return;
      if (!c.dryRun && !(await held())) return;
      if (!c.dryRun) await c.reaper.removeBlobObject(digest);
      c.counts.removedObjects++;
    });
  };
  const sweep = async (b: StoredBlob) => {
    if (b.state === 'committed') {
      const referrers = await c.index.blobReferrers(b.digest);
      if (referrers.length > 0) {
        for (const r of referrers) add(state.blobBytes, r, b.size);
        state.totalBlobBytes += b.size;
      } else if ((await unpublishIfUnreferenced(c, b.digest, { committedBefore: graceFrom, knownUnreferenced: true })) === undefined) {
        state.totalBlobBytes += b.size; // fresh, or referenced meanwhile: still stored
      } else {
        state.pendingBytes += b.size;
      }
    } else if (b.since < graceFrom) {
      await removeObject(b.digest, b.state);
    } else {
      state.pendingBytes += b.size;
    }
  };
  let batch: Array<Promise<void>> = [];
  let handled = 0;
  for await (const b of c.reaper.listStoredBlobs(state.cursor as Digest | undefined)) {
    if (opts.stopped()) {
      await Promise.all(batch);
      return false;
    }
    batch.push(limit(() => sweep(b)));
    if (batch.length >= 64) {
      await Promise.all(batch);
      batch = [];
      state.cursor = b.digest;
      if ((handled += 64) >= SAVE_EVERY) {
        handled = 0;
        await opts.save();
      }
    }
  }
  await Promise.all(batch);
  return true;
}

/**
 * Every large manifest body after `state.cursor` (LifecycleIndex.sweepManifestBodies: the adapter's protocol keeps
 * any body a manifest item points to); removed ones count as storage objects removed. True when finished.
 */
export async function sweepManifestBodies(c: Collector, state: PassState, opts: SweepOptions): Promise<boolean> {
  if (!c.index.sweepManifestBodies) return true;
  let handled = 0;
  for await (const body of c.index.sweepManifestBodies(state.cursor, { graceFrom: opts.graceFrom, dryRun: c.dryRun })) {
    if (body.removed) c.counts.removedObjects++;
    state.cursor = body.key;
    if (++handled % SAVE_EVERY === 0) await opts.save();
    if (opts.stopped()) return false;
  }
  return true;
}
