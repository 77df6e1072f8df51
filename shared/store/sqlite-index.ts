/**
 * Embedded index adapter: tag index, manifest store and blob links in one SQLite file (better-sqlite3 12,
 * WAL mode). Synchronous under the hood; the async port signatures are kept so the DynamoDB adapter fits.
 */
import type { Digest } from '../oci/digest.js';
import { openDatabase } from './sqlite-binding.js';
import type { BlobLinks, FillLeases, LastCheck, LifecycleIndex, ListingCache, ManifestRecord, ManifestStore, ManifestVerification, TagIndex, TagRecord } from './ports.js';
import { createSqliteLifecycle, LIFECYCLE_SCHEMA } from './sqlite-lifecycle.js';

// The counters live in the same file; exported here so they load with the index (the Lambda bundle leaves both out).
export { openSqliteCounters } from './sqlite-counters.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS tags (
  name TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL,
  fetched_at INTEGER NOT NULL, checked_at INTEGER NOT NULL, PRIMARY KEY (name, tag)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
  name TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL,
  stored_at INTEGER NOT NULL, PRIMARY KEY (name, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_links (name TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (name, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listings (name TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, fetched_at INTEGER NOT NULL, PRIMARY KEY (name, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
  key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at INTEGER NOT NULL, heartbeat_at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
`;

/** Default page size for listings when the client gives no `n`. */
export const DEFAULT_PAGE = 1000;

/** Opens (creating when needed) the SQLite index at `file` (`:memory:` works for tests). */
export function openSqliteIndex(
  file: string,
  opts: { now?: () => number } = {},
): TagIndex & ManifestStore & BlobLinks & FillLeases & ListingCache & LifecycleIndex & { close(): void } {
  const now = opts.now ?? Date.now;
  const db = openDatabase(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec(SCHEMA);
  db.exec(LIFECYCLE_SCHEMA);
  // Columns added after the first release of the schema: add them to existing data dirs.
  const columnsOf = (table: string) => new Set((db.prepare(`PRAGMA table_info(${table})`).all() as Array<{ name: string }>).map((c) => c.name));
  const columns = columnsOf('tags');
  if (!columns.has('due_at')) db.exec('ALTER TABLE tags ADD COLUMN due_at INTEGER');
  if (!columns.has('last_check')) db.exec('ALTER TABLE tags ADD COLUMN last_check TEXT');
  if (!columns.has('pulled_at')) db.exec('ALTER TABLE tags ADD COLUMN pulled_at INTEGER');
  if (!columnsOf('manifests').has('pulled_at')) db.exec('ALTER TABLE manifests ADD COLUMN pulled_at INTEGER');
  if (!columnsOf('manifests').has('verification')) db.exec('ALTER TABLE manifests ADD COLUMN verification TEXT');
  db.exec('CREATE INDEX IF NOT EXISTS tags_due ON tags (due_at) WHERE due_at IS NOT NULL');
  // Leases of an older release have no heartbeat (0): stale, so a new process may take them over.
  const leaseColumns = new Set((db.prepare('PRAGMA table_info(leases)').all() as Array<{ name: string }>).map((c) => c.name));
  if (!leaseColumns.has('heartbeat_at')) db.exec('ALTER TABLE leases ADD COLUMN heartbeat_at INTEGER NOT NULL DEFAULT 0');

  const getTag = db.prepare('SELECT * FROM tags WHERE name = ? AND tag = ?');
  const putTag = db.prepare(
    `INSERT INTO tags (name, tag, digest, media_type, size, fetched_at, checked_at, due_at, last_check, pulled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (name, tag) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
       size = excluded.size, fetched_at = excluded.fetched_at, checked_at = excluded.checked_at,
       due_at = excluded.due_at, last_check = excluded.last_check, pulled_at = excluded.pulled_at`,
  );
  const recordCheck = db.prepare('UPDATE tags SET checked_at = ?, due_at = ?, last_check = ? WHERE name = ? AND tag = ?');
  const deleteTag = db.prepare('DELETE FROM tags WHERE name = ? AND tag = ?');
  const listDue = db.prepare('SELECT * FROM tags WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?');
  const touchTag = db.prepare('UPDATE tags SET checked_at = ? WHERE name = ? AND tag = ?');
  const recordTagPull = db.prepare('UPDATE tags SET pulled_at = ? WHERE name = ? AND tag = ?');
  const recordManifestPull = db.prepare('UPDATE manifests SET pulled_at = ? WHERE name = ? AND digest = ?');
  const listTags = db.prepare('SELECT tag FROM tags WHERE name = ? AND tag > ? ORDER BY tag LIMIT ?');
  const listRepos = db.prepare(
    `SELECT name FROM (SELECT name FROM tags UNION SELECT name FROM manifests) WHERE name > ? ORDER BY name LIMIT ?`,
  );
  const getManifest = db.prepare('SELECT * FROM manifests WHERE name = ? AND digest = ?');
  // Storing a manifest again keeps its bytes (the same digest) and sets its last-pulled time again.
  const putManifest = db.prepare(
    `INSERT INTO manifests (name, digest, media_type, size, body, stored_at, pulled_at, verification) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (name, digest) DO UPDATE SET pulled_at = excluded.pulled_at, verification = COALESCE(excluded.verification, manifests.verification)`,
  );
  const recordVerification = db.prepare('UPDATE manifests SET verification = ? WHERE name = ? AND digest = ?');
  const isLinked = db.prepare('SELECT 1 FROM blob_links WHERE name = ? AND digest = ?');
  const link = db.prepare('INSERT OR IGNORE INTO blob_links (name, digest) VALUES (?, ?)');
  // Taken when free, expired, stale (heartbeat at or before @staleBefore) or already ours; a single statement, so
  // atomic across processes sharing the file.
  const acquire = db.prepare(
    `INSERT INTO leases (key, owner, expires_at, heartbeat_at) VALUES (@key, @owner, @expires, @now)
     ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at, heartbeat_at = excluded.heartbeat_at
     WHERE leases.expires_at <= @now OR leases.owner = excluded.owner OR leases.heartbeat_at <= @staleBefore`,
  );
  const heartbeat = db.prepare('UPDATE leases SET heartbeat_at = @now, expires_at = @expires WHERE key = @key AND owner = @owner');
  const getLease = db.prepare('SELECT owner, expires_at, heartbeat_at FROM leases WHERE key = ?');
  const release = db.prepare('DELETE FROM leases WHERE key = ? AND owner = ?');
  const getListing = db.prepare('SELECT body, fetched_at FROM listings WHERE name = ? AND key = ?');
  // Kept only while the repository holds a tag or a manifest (ports.ts): the check and the write are one statement,
  // so a GC emptying the repository (one transaction, sqlite-lifecycle.ts) is entirely before or after it.
  const putListing = db.prepare(
    `INSERT INTO listings (name, key, body, fetched_at) SELECT @name, @key, @body, @at
       WHERE EXISTS (SELECT 1 FROM tags WHERE name = @name) OR EXISTS (SELECT 1 FROM manifests WHERE name = @name)
     ON CONFLICT (name, key) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at`,
  );
  type TagRow = {
    name: string; tag: string; digest: string; media_type: string; size: number; fetched_at: number; checked_at: number;
    due_at: number | null; last_check: string | null; pulled_at: number | null;
  };
  const tagOf = (row: TagRow): TagRecord => ({
    name: row.name, tag: row.tag, digest: row.digest as Digest, mediaType: row.media_type, size: row.size,
    fetchedAt: row.fetched_at, checkedAt: row.checked_at,
    ...(row.due_at === null ? {} : { dueAt: row.due_at }),
    ...(row.last_check === null ? {} : { lastCheck: JSON.parse(row.last_check) as LastCheck }),
    ...(row.pulled_at === null ? {} : { pulledAt: row.pulled_at }),
  });
  type ManifestRow = {
    name: string; digest: string; media_type: string; size: number; body: Buffer; stored_at: number; pulled_at: number | null; verification: string | null;
  };
  const manifestOf = (row: ManifestRow): ManifestRecord => ({
    name: row.name, digest: row.digest as Digest, mediaType: row.media_type, size: row.size, body: new Uint8Array(row.body),
    pulledAt: row.pulled_at ?? row.stored_at,
    ...(row.verification === null ? {} : { verification: JSON.parse(row.verification) as ManifestVerification }),
  });
  const lifecycle = createSqliteLifecycle(db, tagOf as (row: never) => TagRecord, manifestOf as (row: never) => ManifestRecord);
  const putManifestTx = db.transaction((r: ManifestRecord, blobs: string[], rule: string) => {
    const t = now();
    putManifest.run(r.name, r.digest, r.mediaType, r.size, Buffer.from(r.body), t, r.pulledAt ?? t, r.verification ? JSON.stringify(r.verification) : null);
    lifecycle.insertRefs(r.name, r.digest, rule, blobs);
  });

  return {
    async getTag(name, tag) {
      const row = getTag.get(name, tag) as TagRow | undefined;
      return row && tagOf(row);
    },
    async putTag(r: TagRecord) {
      putTag.run(r.name, r.tag, r.digest, r.mediaType, r.size, r.fetchedAt, r.checkedAt, r.dueAt ?? null, r.lastCheck ? JSON.stringify(r.lastCheck) : null, r.pulledAt ?? null);
    },
    async recordCheck(name, tag, check) {
      recordCheck.run(check.checkedAt, check.dueAt ?? null, JSON.stringify(check.lastCheck), name, tag);
    },
    async deleteTag(name, tag) {
      deleteTag.run(name, tag);
    },
    async listDueTags(now, limit) {
      return (listDue.all(now, limit) as TagRow[]).map(tagOf);
    },
    async touchTag(name, tag, checkedAt) {
      touchTag.run(checkedAt, name, tag);
    },
    async recordTagPull(name, tag, pulledAt) {
      recordTagPull.run(pulledAt, name, tag);
    },
    async recordManifestPull(name, digest, pulledAt) {
      return recordManifestPull.run(pulledAt, name, digest).changes === 1;
    },
    async listTags(name, opts = {}) {
      return (listTags.all(name, opts.last ?? '', opts.n ?? DEFAULT_PAGE) as Array<{ tag: string }>).map((r) => r.tag);
    },
    async listRepositories(opts = {}) {
      return (listRepos.all(opts.last ?? '', opts.n ?? DEFAULT_PAGE) as Array<{ name: string }>).map((r) => r.name);
    },
    async getManifest(name, digest) {
      const row = getManifest.get(name, digest) as ManifestRow | undefined;
      return row && manifestOf(row);
    },
    async putManifest(record, blobs, rule) {
      putManifestTx(record, [...new Set(blobs)], rule ?? '');
    },
    async recordVerification(name, digest, verification) {
      recordVerification.run(JSON.stringify(verification), name, digest);
    },
    async isLinked(name, digest) {
      return isLinked.get(name, digest) !== undefined;
    },
    async link(name, digest) {
      link.run(name, digest);
    },
    async acquireLease(key, owner, ttlSeconds, staleSeconds) {
      const now = Date.now();
      const staleBefore = staleSeconds === undefined ? -1 : now - staleSeconds * 1000;
      return acquire.run({ key, owner, expires: now + ttlSeconds * 1000, now, staleBefore }).changes === 1;
    },
    async heartbeatLease(key, owner, ttlSeconds) {
      const now = Date.now();
      return heartbeat.run({ key, owner, now, expires: now + ttlSeconds * 1000 }).changes === 1;
    },
    async getLease(key) {
      const row = getLease.get(key) as { owner: string; expires_at: number; heartbeat_at: number } | undefined;
      return row && { owner: row.owner, expiresAt: row.expires_at, heartbeatAt: row.heartbeat_at };
    },
    async releaseLease(key, owner) {
      release.run(key, owner);
    },
    async getListing(name, key) {
      const row = getListing.get(name, key) as { body: string; fetched_at: number } | undefined;
      return row && { body: row.body, fetchedAt: row.fetched_at };
    },
    async putListing(name, key, body) {
      return putListing.run({ name, key, body, at: Date.now() }).changes === 1;
    },
    ...lifecycle,
    close() {
      db.close();
    },
  };
}
