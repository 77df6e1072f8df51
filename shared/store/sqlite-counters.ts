/**
 * The embedded adapter of {@link RuleCounters} (counters.ts): table `rule_counts` in the index's SQLite file, one
 * row per rule and hour bucket (`hour` = the bucket's start, ms) and a total row per rule (`hour` = -1, with
 * `first_at`). Adding is an upsert that adds (`x = x + excluded.x`), so the server and CLI commands writing the
 * same file add up; each add also prunes the rule's buckets older than two days.
 */
import { openDatabase } from './sqlite-binding.js';
import { COUNT_FIELDS, KEEP_BUCKETS_MS, noCounts, type RuleCounters, type RuleCounts } from './counters.js';

const TOTAL = -1;
const COLUMNS = COUNT_FIELDS.map((f) => f.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));

/** Opens the counters in the SQLite file `file` (its own connection; WAL mode, as the index). */
export function openSqliteCounters(file: string): RuleCounters & { close(): void } {
  const db = openDatabase(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec(`CREATE TABLE IF NOT EXISTS rule_counts (rule TEXT NOT NULL, hour INTEGER NOT NULL, first_at INTEGER,
    ${COLUMNS.map((c) => `${c} INTEGER NOT NULL DEFAULT 0`).join(', ')}, PRIMARY KEY (rule, hour)) WITHOUT ROWID`);
  const upsert = db.prepare(
    `INSERT INTO rule_counts (rule, hour, first_at, ${COLUMNS.join(', ')}) VALUES (?, ?, ?, ${COLUMNS.map(() => '?').join(', ')})
     ON CONFLICT (rule, hour) DO UPDATE SET ${COLUMNS.map((c) => `${c} = ${c} + excluded.${c}`).join(', ')}`,
  );
  const prune = db.prepare('DELETE FROM rule_counts WHERE rule = ? AND hour >= 0 AND hour < ?');
  const recent = db.prepare(`SELECT ${COLUMNS.map((c) => `COALESCE(SUM(${c}), 0) AS ${c}`).join(', ')} FROM rule_counts WHERE rule = ? AND hour >= ?`);
  const total = db.prepare(`SELECT first_at, ${COLUMNS.join(', ')} FROM rule_counts WHERE rule = ? AND hour = ${TOTAL}`);
  const values = (c: RuleCounts) => COUNT_FIELDS.map((f) => c[f]);
  const fromRow = (row: Record<string, number> | undefined): RuleCounts => {
    const c = noCounts();
    COUNT_FIELDS.forEach((f, i) => (c[f] = Number(row?.[COLUMNS[i]] ?? 0)));
    return c;
  };
  const add = db.transaction((rule: string, hour: number, counts: RuleCounts, now: number) => {
    upsert.run(rule, hour, null, ...values(counts));
    upsert.run(rule, TOTAL, now, ...values(counts));
    prune.run(rule, hour - KEEP_BUCKETS_MS);
  });

  return {
    async add(rule, hour, counts, now) {
      add(rule, hour, counts, now);
    },
    async read(rules, sinceHour) {
      return rules.map((rule) => {
        const t = total.get(rule) as (Record<string, number> & { first_at: number | null }) | undefined;
        return { rule, recent: fromRow(recent.get(rule, sinceHour) as Record<string, number>), total: fromRow(t), ...(t?.first_at ? { since: t.first_at } : {}) };
      });
    },
    close: () => db.close(),
  };
}
