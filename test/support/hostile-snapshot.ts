/**
 * A complete, comparable snapshot of the embedded store, for tests that prove a store unchanged: every row of
 * every SQLite table (read through a second, read-only connection, so the adapter's own API cannot hide a
 * table or a column) and the SHA-256 of every file under the data directory, `tmp/` included.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import Database from 'better-sqlite3';

/** Rows per table (values as JSON-friendly scalars; binary as `hex:`), plus file digests by relative path. */
export interface StoreSnapshot {
  /** `sqlite_master` entries: `<type> <name>: <sql>`. */
  schema: string[];
  tables: Record<string, Array<Record<string, unknown>>>;
  /** Relative path → `sha256:<hex> <size>` for files, `dir` for directories. */
  files: Record<string, string>;
}

/** Files of the data directory that are the SQLite database itself (covered row by row instead). */
const isDatabaseFile = (rel: string, dbFile: string) => rel === dbFile || rel.startsWith(`${dbFile}-`);

const scalar = (v: unknown) => (Buffer.isBuffer(v) ? `hex:${v.toString('hex')}` : typeof v === 'bigint' ? `bigint:${v}` : v);

/** Reads every table of the SQLite file at `dbPath`, rows ordered by all their columns. */
export function snapshotTables(dbPath: string): Pick<StoreSnapshot, 'schema' | 'tables'> {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const master = db.prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").all() as Array<{ type: string; name: string; sql: string | null }>;
    const tables: StoreSnapshot['tables'] = {};
    for (const { name } of master.filter((m) => m.type === 'table')) {
      const columns = (db.prepare(`PRAGMA table_info("${name}")`).all() as Array<{ name: string }>).map((c) => `"${c.name}"`);
      const rows = db.prepare(`SELECT * FROM "${name}" ORDER BY ${columns.join(', ')}`).all() as Array<Record<string, unknown>>;
      tables[name] = rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, scalar(v)])));
    }
    return { schema: master.map((m) => `${m.type} ${m.name}: ${m.sql ?? ''}`), tables };
  } finally {
    db.close();
  }
}

/** Digests every file (and lists every directory) under `root`, skipping the database file `dbPath`. */
export function snapshotFiles(root: string, dbPath?: string): StoreSnapshot['files'] {
  const dbFile = dbPath ? relative(root, dbPath) : undefined;
  const files: StoreSnapshot['files'] = {};
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const abs = join(dir, entry.name);
      const rel = relative(root, abs);
      if (dbFile && isDatabaseFile(rel, dbFile)) continue;
      if (entry.isDirectory()) {
        files[`${rel}/`] = 'dir';
        walk(abs);
      } else {
        const bytes = readFileSync(abs);
        files[rel] = `sha256:${createHash('sha256').update(bytes).digest('hex')} ${bytes.length}`;
      }
    }
  };
  walk(root);
  return Object.fromEntries(Object.entries(files).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Snapshots the SQLite file and the data directory of an embedded store. */
export function snapshotStore(dbPath: string, dataDir: string): StoreSnapshot {
  return { ...snapshotTables(dbPath), files: snapshotFiles(dataDir, dbPath) };
}

/** Number of rows in `table` (0 when the table does not exist). */
export function countRows(dbPath: string, table: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(table);
    return exists ? (db.prepare(`SELECT count(*) AS n FROM "${table}"`).get() as { n: number }).n : 0;
  } finally {
    db.close();
  }
}
