/**
 * The embedded index's {@link LifecycleIndex} (GC, purge, ls) over the same SQLite database as sqlite-index.ts:
 * paged listings of a repository's tags and manifests, conditional deletes, the blob reference rows
 * (`blob_refs`) and the lifecycle's own small state values. Each delete is one statement or one transaction, so
 * it is atomic against the server's writes from another process (SQLite serialises writers on the file).
 */
import type Database from 'better-sqlite3';
import type { Digest } from '../oci/digest.js';
import type { LifecycleIndex, ManifestRecord, TagRecord } from './ports.js';

/** Tables and columns the lifecycle adds (created by `openSqliteIndex`, also on data dirs made before it). */
export const LIFECYCLE_SCHEMA = `
CREATE TABLE IF NOT EXISTS blob_refs (
  digest TEXT NOT NULL, rule TEXT NOT NULL, name TEXT NOT NULL, manifest TEXT NOT NULL,
  PRIMARY KEY (digest, rule, name, manifest)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blob_refs_by_manifest ON blob_refs (name, manifest);
CREATE TABLE IF NOT EXISTS lifecycle (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
`;

/** Builds the lifecycle port over `db`; `tagOf` / `manifestOf` turn rows into records as the index does. */
export function createSqliteLifecycle(
  db: Database.Database,
  tagOf: (row: never) => TagRecord,
  manifestOf: (row: never) => ManifestRecord,
): LifecycleIndex & { insertRefs(name: string, digest: string, rule: string, blobs: string[]): void } {
  const listTags = db.prepare('SELECT * FROM tags WHERE name = ? AND tag > ? ORDER BY tag LIMIT ?');
  const listManifests = db.prepare('SELECT * FROM manifests WHERE name = ? AND digest > ? ORDER BY digest LIMIT ?');
  // `pulledAt` of a row written before the lifecycle is its fetch / store time (what the records report).
  const deleteTagIf = db.prepare(
    'DELETE FROM tags WHERE name = @name AND tag = @tag AND digest = @digest AND (@pulled IS NULL OR COALESCE(pulled_at, fetched_at) = @pulled)',
  );
  const deleteManifestIf = db.prepare(
    'DELETE FROM manifests WHERE name = @name AND digest = @digest AND (@pulled IS NULL OR COALESCE(pulled_at, stored_at) = @pulled)',
  );
  const deleteRefs = db.prepare('DELETE FROM blob_refs WHERE name = ? AND manifest = ?');
  const insertRef = db.prepare('INSERT OR IGNORE INTO blob_refs (digest, rule, name, manifest) VALUES (?, ?, ?, ?)');
  const referrers = db.prepare('SELECT DISTINCT rule FROM blob_refs WHERE digest = ? ORDER BY rule');
  const referencedBy = db.prepare('SELECT 1 FROM blob_refs WHERE digest = ? AND rule = ? AND name = ? LIMIT 1');
  const hasContent = db.prepare('SELECT 1 FROM tags WHERE name = ? UNION ALL SELECT 1 FROM manifests WHERE name = ? LIMIT 1');
  const dropLinks = db.prepare('DELETE FROM blob_links WHERE name = ?');
  const dropListings = db.prepare('DELETE FROM listings WHERE name = ?');
  const listingsWithoutContent = `FROM listings WHERE NOT EXISTS (SELECT 1 FROM tags WHERE tags.name = listings.name)
    AND NOT EXISTS (SELECT 1 FROM manifests WHERE manifests.name = listings.name)`;
  const countOrphanListings = db.prepare(`SELECT COUNT(*) AS n ${listingsWithoutContent}`);
  const dropOrphanListings = db.prepare(`DELETE ${listingsWithoutContent}`);
  const getState = db.prepare('SELECT value FROM lifecycle WHERE key = ?');
  const putState = db.prepare('INSERT INTO lifecycle (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value');
  const deleteState = db.prepare('DELETE FROM lifecycle WHERE key = ?');

  const insertRefs = (name: string, digest: string, rule: string, blobs: string[]) => {
    for (const b of blobs) insertRef.run(b, rule, name, digest);
  };
  const deleteManifestTx = db.transaction((name: string, digest: string, pulled: number | null) => {
    if (deleteManifestIf.run({ name, digest, pulled }).changes !== 1) return false;
    deleteRefs.run(name, digest);
    return true;
  });
  const dropTx = db.transaction((name: string) => {
    if (hasContent.get(name, name) !== undefined) return false;
    dropLinks.run(name);
    dropListings.run(name);
    return true;
  });
  const addRefsTx = db.transaction(insertRefs);

  return {
    insertRefs,
    async listTagRecords(name, { after, limit }) {
      return (listTags.all(name, after ?? '', limit) as never[]).map(tagOf);
    },
    async listManifestRecords(name, { after, limit }) {
      return (listManifests.all(name, after ?? '', limit) as never[]).map(manifestOf);
    },
    async deleteTagIf(name, tag, expect) {
      return deleteTagIf.run({ name, tag, digest: expect.digest, pulled: expect.pulledAt ?? null }).changes === 1;
    },
    async deleteManifest(name, digest, opts) {
      // The reference rows go in the same transaction (by manifest, so `referencedBlobs` is not needed here).
      return deleteManifestTx(name, digest, opts.ifPulledAt ?? null);
    },
    async dropRepositoryIfEmpty(name) {
      return dropTx(name);
    },
    async sweepListings({ dryRun }) {
      // One statement: the whole table at once (indexed lookups per listing row), nothing to resume.
      if (dryRun) return { removed: (countOrphanListings.get() as { n: number }).n };
      return { removed: dropOrphanListings.run().changes };
    },
    async addBlobReferences(name, digest, rule, blobs) {
      addRefsTx(name, digest, rule, blobs);
    },
    async finishInterruptedDeletes() {
      return 0; // a manifest and its reference rows go in one transaction
    },
    async blobReferrers(digest: Digest) {
      return (referrers.all(digest) as Array<{ rule: string }>).map((r) => r.rule);
    },
    async referencedBy(digest, rule, name) {
      return referencedBy.get(digest, rule, name) !== undefined;
    },
    async getLifecycleState(key) {
      return (getState.get(key) as { value: string } | undefined)?.value;
    },
    async putLifecycleState(key, value) {
      if (value === undefined) deleteState.run(key);
      else putState.run(key, value);
    },
  };
}
