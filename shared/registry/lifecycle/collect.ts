/**
 * The deleting steps of the lifecycle, shared by garbage collection, budgets and purge. Their order is what makes
 * a concurrent pull safe (gc.ts has the whole design):
 * 1. tags, each only if it still points where it did and was not pulled since (a conditional delete);
 * 2. manifests no kept tag or index refers to any more, each only if not pulled or stored again since (its
 *    last-pulled time is the condition), then their blob reference items (the index adapters order those two);
 * 3. blobs no reference item names any more: under the digest's fill lease (so no fill of it runs), re-checked,
 *    taken out of the index (unpublished), and re-checked once more — a reference that appeared in between puts the
 *    blob back. Their bytes stay until a later pass, past the grace period.
 * A repository left with no tag and no manifest loses its blob links, kept listings and catalog entry.
 */
import { randomUUID } from 'node:crypto';
import type { Digest } from '../../oci/digest.js';
import type { BlobReaper, FillLeases, LifecycleIndex } from '../../store/ports.js';
import type { Log } from '../deps.js';
import { closure, planRepository, readRepository, type ManifestInfo, type Reference, type RetentionRules } from './repository.js';

/** Seconds the GC holds a digest's fill lease while it unpublishes or removes the blob (milliseconds of work). */
const GC_LEASE_SECONDS = 60;

/** Counters of one lifecycle run (a GC pass or a purge). Bytes. */
export interface Counts {
  evictedTags: number;
  deletedManifests: number;
  deletedBlobs: number;
  /** Bytes of the manifests and blobs taken out of the index (blob bytes leave storage after the grace period). */
  freedBytes: number;
  /**
   * Storage objects deleted: blobs unpublished at least the grace period ago, orphans, and large manifest bodies
   * no stored manifest points to any more (DynamoDB + S3).
   */
  removedObjects: number;
  /** Temp files of writes whose process died (kill -9 mid-fill), removed, and their bytes (BlobReaper.removeAbandonedWrites). */
  removedTempFiles: number;
  removedTempBytes: number;
}

/** What the deleting steps work with. */
export interface Collector {
  index: LifecycleIndex;
  reaper: BlobReaper;
  leases: FillLeases;
  log: Log;
  now(): number;
  /** Count what would be deleted, delete nothing. */
  dryRun: boolean;
  counts: Counts;
}

export const emptyCounts = (): Counts => ({ evictedTags: 0, deletedManifests: 0, deletedBlobs: 0, freedBytes: 0, removedObjects: 0, removedTempFiles: 0, removedTempBytes: 0 });

/** The fill lease key of a blob: the one the miss path takes (blobs.ts), so a GC and a fill of one digest exclude each other. */
export const blobLeaseKey = (digest: Digest) => `blob:${digest}`;

/**
 * Runs `fn` holding `digest`'s fill lease; returns undefined without running it when a fill holds the lease.
 * `fn` calls `held()` right before a destructive step: a heartbeat that is false when a fill took the lease over
 * (the miss path takes over leases whose heartbeat went stale, so a GC that stalls loses it, and must not go on).
 */
export async function withBlobLease<T>(c: Pick<Collector, 'leases'>, digest: Digest, fn: (held: () => Promise<boolean>) => Promise<T>): Promise<T | undefined> {
  const owner = `gc-${randomUUID()}`;
  if (!(await c.leases.acquireLease(blobLeaseKey(digest), owner, GC_LEASE_SECONDS))) return undefined;
  try {
    return await fn(() => c.leases.heartbeatLease(blobLeaseKey(digest), owner, GC_LEASE_SECONDS));
  } finally {
    await c.leases.releaseLease(blobLeaseKey(digest), owner).catch(() => undefined);
  }
}

/** What {@link collectRepository} removed (or, in a dry run, would remove). */
export interface Collected {
  deletedManifests: ManifestInfo[];
  /** The repository's manifests this step kept. */
  keptManifests: ManifestInfo[];
  /** Blobs the deleted manifests referenced: candidates for {@link releaseBlobs}. */
  released: Reference[];
}

/**
 * Applies `rules` to repository `name` (steps 1 and 2 of the file header). `conditional: false` (a purge) deletes
 * whatever it names, pulled since or not.
 */
export async function collectRepository(c: Collector, name: string, rules: RetentionRules, opts: { conditional: boolean }): Promise<Collected> {
  const state = await readRepository(c.index, name);
  let plan = planRepository(state, rules);
  if (c.dryRun) {
    c.counts.evictedTags += plan.deleteTags.length;
    c.counts.deletedManifests += plan.deleteManifests.length;
    c.counts.freedBytes += plan.deleteManifests.reduce((s, m) => s + m.size, 0);
    return { deletedManifests: plan.deleteManifests, keptManifests: plan.keptManifests, released: plan.deleteManifests.flatMap((m) => m.blobs) };
  }
  const kept: string[] = [];
  let tagsLeft = state.tags.length;
  for (const t of plan.deleteTags) {
    const ok = await c.index.deleteTagIf(name, t.tag, { digest: t.digest, ...(opts.conditional ? { pulledAt: t.pulledAt ?? t.fetchedAt } : {}) });
    if (ok) {
      c.counts.evictedTags++;
      tagsLeft--;
    } else {
      kept.push(t.tag);
    }
  }
  if (kept.length > 0) {
    // A tag was pulled or moved meanwhile: decide the manifests again on what the repository holds now, keeping
    // what that tag reaches.
    const fresh = await readRepository(c.index, name);
    const reached = closure(fresh, fresh.tags.filter((t) => kept.includes(t.tag)).map((t) => t.digest));
    plan = planRepository(fresh, {
      ...rules,
      evictTags: new Set([...(rules.evictTags ?? [])].filter((t) => !kept.includes(t))),
      dropManifests: new Set([...(rules.dropManifests ?? [])].filter((d) => !reached.has(d))),
    });
  }
  const deletedManifests: ManifestInfo[] = [];
  for (const m of plan.deleteManifests) {
    const referencedBlobs = m.blobs.map((b) => b.digest);
    if (await c.index.deleteManifest(name, m.digest, { referencedBlobs, ...(opts.conditional ? { ifPulledAt: m.pulledAt } : {}) })) {
      deletedManifests.push(m);
      c.counts.deletedManifests++;
      c.counts.freedBytes += m.size;
    }
  }
  // Left with nothing (emptied now, or found so: a tag the refresh deleted, a writer that died after marking it):
  // its links, listings and catalog entry go (so `_catalog` and `ls` stop listing it); the index checks again that
  // it holds no tag or manifest, and a writer storing one meanwhile keeps it listed (dynamodb-context.ts).
  if (tagsLeft === 0 && plan.keptManifests.length === 0 && deletedManifests.length === plan.deleteManifests.length) await c.index.dropRepositoryIfEmpty(name);
  return { deletedManifests, keptManifests: plan.keptManifests, released: deletedManifests.flatMap((m) => m.blobs) };
}

/**
 * Step 3 for `blobs`: each one no reference item names any more is unpublished (under its lease, re-checked before
 * and after). Returns the digests unpublished with their sizes.
 */
export async function releaseBlobs(c: Collector, blobs: Iterable<Reference>): Promise<Array<{ digest: Digest; size: number }>> {
  const released: Array<{ digest: Digest; size: number }> = [];
  const seen = new Set<Digest>();
  for (const { digest } of blobs) {
    if (seen.has(digest)) continue;
    seen.add(digest);
    const size = await unpublishIfUnreferenced(c, digest);
    if (size !== undefined) released.push({ digest, size });
  }
  return released;
}

/** Unpublishes one committed blob when nothing references it (see the file header); its size when it did. */
export async function unpublishIfUnreferenced(
  c: Collector,
  digest: Digest,
  opts: { committedBefore?: number; knownUnreferenced?: boolean } = {},
): Promise<number | undefined> {
  const referenced = async () => (await c.index.blobReferrers(digest)).length > 0;
  // Checked (again) under the lease below; the check here only spares taking the lease for a referenced blob.
  if (!opts.knownUnreferenced && (await referenced())) return undefined;
  const size = await withBlobLease(c, digest, async (held) => {
    if (await referenced()) return undefined;
    const stored = await c.reaper.storedBlob(digest);
    if (stored?.state !== 'committed') return undefined;
    if (opts.committedBefore !== undefined && stored.since >= opts.committedBefore) return undefined;
    if (c.dryRun) return stored.size;
    if (!(await held()) || !(await c.reaper.unpublishBlob(digest, c.now()))) return undefined;
    if (await referenced()) {
      await c.reaper.republishBlob(digest);
      return undefined;
    }
    return stored.size;
  });
  if (size !== undefined) {
    c.counts.deletedBlobs++;
    c.counts.freedBytes += size;
  }
  return size;
}
