/**
 * The scheduled refresh at scale: 10,000 cached tags over 100 repositories in the SQLite index, 9,000 of them
 * due and 1,000 not. Proves that a pass keeps to the rule's concurrency cap, asks one HEAD per due tag (a GET
 * only for the 50 that moved, by digest), reads only due items from the index (never lists repositories or
 * tags), and that a pass stopped half-way (`maxTags`, or its deadline) resumes with exactly the unchecked rest.
 * Time and memory are measured by `bench/refresh.ts`, not here.
 *
 * Upstream: the real {@link createUpstreamClient} with its `fetchImpl` replaced by an in-process responder that
 * counts requests, instead of the HTTP fake (`test/support/fake-upstream.ts`). The refresh logic is what is
 * under test; HTTP is covered by refresh.test.ts and measured by the benchmark. (9,000 loopback HEADs through
 * fetch take 10-40 s on the shared 2-core machine; the responder, well under a second.) It answers on a later
 * turn of the event loop (setImmediate), so requests overlap the way network requests do and the in-flight
 * count is a real measure of the cap.
 *
 * Each test seeds its own in-memory SQLite index through the port (putManifest + putTag: 20,000 writes). The
 * adapter and its statements are the same as on disk; what writes cost on disk is the benchmark's business.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../../shared/config.js';
import { OCI_MANIFEST } from '../../shared/oci/media-types.js';
import { createRegistry } from '../../shared/registry/app.js';
import type { Log, RegistryDeps, TagChange } from '../../shared/registry/deps.js';
import { createRefresher, type Refresher } from '../../shared/registry/refresh.js';
import { createMirrorNames, createRuleResolver } from '../../shared/registry/rules.js';
import type { BlobStore, TagIndex } from '../../shared/store/ports.js';
import { openSqliteIndex } from '../../shared/store/sqlite-index.js';
import { createUpstreamClient } from '../../shared/upstream/client.js';
import { HOUR, seedTagIndex, synthesizeTags, type SynthTag } from '../support/refresh-synth.js';

const TAGS = 10_000;
const REPOS = 100;
const CONCURRENCY = 8;
/** Never contacted: every request goes to the in-process responder. */
const UPSTREAM = 'http://upstream.invalid';

const config = parseConfig({ rules: [{ prefix: 'p', upstream: UPSTREAM, ttlSeconds: 3600, refreshConcurrency: CONCURRENCY }] });

// ---------------------------------------------------------------------------------------------------------
// The synthetic cache (test/support/refresh-synth.ts; bench/refresh.ts builds the same): tag i lives in repository
// i % 100; every 10th tag is not due (due in more than 2 h); 50 due tags (i = 0, 200, …, 9,800) moved upstream.

const keyOf = (t: { name: string; tag: string }) => `${t.name}:${t.tag}`;
const headPath = (t: SynthTag) => `/v2/${t.repo}/manifests/${t.tag}`;

// ---------------------------------------------------------------------------------------------------------
// The in-process upstream: answers manifest HEAD/GET by tag or digest from a map; counts everything.

interface Responder {
  fetchImpl: typeof fetch;
  heads: Map<string, number>;
  gets: string[];
  other: string[];
  readonly maxInFlight: number;
  /** Called as each HEAD is answered, with the number of HEADs answered so far (this one included). */
  onHead?: (count: number) => void;
}

function createResponder(tags: SynthTag[]): Responder {
  const byPath = new Map<string, SynthTag['cached']>();
  for (const t of tags) {
    byPath.set(`/v2/${t.repo}/manifests/${t.tag}`, t.upstream);
    byPath.set(`/v2/${t.repo}/manifests/${t.upstream.digest}`, t.upstream);
    byPath.set(`/v2/${t.repo}/manifests/${t.cached.digest}`, t.cached);
  }
  let inFlight = 0;
  let maxInFlight = 0;
  let headCount = 0;
  const r: Responder = {
    heads: new Map(),
    gets: [],
    other: [],
    get maxInFlight() {
      return maxInFlight;
    },
    fetchImpl: (async (input: string | URL | Request, init?: RequestInit) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      const method = init?.method ?? 'GET';
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        await new Promise((resolve) => setImmediate(resolve));
        if (method === 'HEAD') {
          r.heads.set(url.pathname, (r.heads.get(url.pathname) ?? 0) + 1);
          headCount++;
          r.onHead?.(headCount);
        } else if (method === 'GET') r.gets.push(url.pathname);
        else r.other.push(`${method} ${url.pathname}`);
        const m = byPath.get(url.pathname);
        if (!m) return new Response('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}', { status: 404 });
        const headers = { 'Content-Type': OCI_MANIFEST, 'Content-Length': String(m.body.length), 'Docker-Content-Digest': m.digest };
        return new Response(method === 'HEAD' ? null : new Uint8Array(m.body), { status: 200, headers });
      } finally {
        inFlight--;
      }
    }) as typeof fetch,
  };
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// The tag index, wrapped to count what the refresh reads (and writes).

interface IndexReads {
  /** One entry per listDueTags call: its arguments, what it returned, and how many of those were not due. */
  due: Array<{ now: number; limit: number; keys: string[]; notDue: number }>;
  getTag: number;
  listTags: number;
  listRepositories: number;
  putTag: number;
  recordCheck: number;
  deleteTag: number;
  touchTag: number;
}

function countingTags(inner: TagIndex): { tags: TagIndex; reads: IndexReads } {
  const reads: IndexReads = { due: [], getTag: 0, listTags: 0, listRepositories: 0, putTag: 0, recordCheck: 0, deleteTag: 0, touchTag: 0 };
  const tags: TagIndex = {
    getTag: (name, tag) => (reads.getTag++, inner.getTag(name, tag)),
    putTag: (r) => (reads.putTag++, inner.putTag(r)),
    touchTag: (name, tag, at) => (reads.touchTag++, inner.touchTag(name, tag, at)),
    recordTagPull: (name, tag, at) => inner.recordTagPull(name, tag, at),
    recordCheck: (name, tag, c) => (reads.recordCheck++, inner.recordCheck(name, tag, c)),
    deleteTag: (name, tag) => (reads.deleteTag++, inner.deleteTag(name, tag)),
    listTags: (name, o) => (reads.listTags++, inner.listTags(name, o)),
    listRepositories: (o) => (reads.listRepositories++, inner.listRepositories(o)),
    async listDueTags(now, limit) {
      const got = await inner.listDueTags(now, limit);
      reads.due.push({ now, limit, keys: got.map(keyOf), notDue: got.filter((t) => !(t.dueAt !== undefined && t.dueAt <= now)).length });
      return got;
    },
  };
  return { tags, reads };
}

const noBlobs: BlobStore = {
  stat: () => Promise.reject(new Error('the refresh must not touch blobs')),
  write: () => Promise.reject(new Error('the refresh must not touch blobs')),
  locate: () => Promise.reject(new Error('the refresh must not touch blobs')),
};

// ---------------------------------------------------------------------------------------------------------
// One registry per test, assembled like test/support/harness.ts but with the responder and the counting index.

let T0: number;
let synth: SynthTag[];
let dueKeys: string[];

beforeAll(() => {
  T0 = Date.now();
  synth = synthesizeTags(T0, { tags: TAGS, repos: REPOS, moved: 50, notDueInMs: 2 * HOUR });
  dueKeys = synth.filter((t) => t.due).map(keyOf).sort();
});

interface Registry {
  refresher: Refresher;
  reads: IndexReads;
  responder: Responder;
  changes: TagChange[];
  logged: Array<{ level: string; message: string }>;
  /** The index itself, not counted: for assertions after a pass. */
  raw: ReturnType<typeof openSqliteIndex>;
}

const opened: Array<{ close(): void }> = [];
afterEach(() => {
  vi.restoreAllMocks();
  for (const o of opened.splice(0)) o.close();
});

async function openRegistry(): Promise<Registry> {
  const raw = openSqliteIndex(':memory:');
  opened.push(raw);
  await seedTagIndex(raw, synth); // putManifest, then putTag, for each of the 10,000 tags
  const { tags, reads } = countingTags(raw);
  const responder = createResponder(synth);
  const changes: TagChange[] = [];
  const logged: Registry['logged'] = [];
  const log: Log = {
    debug: (message) => void logged.push({ level: 'debug', message }),
    info: (message) => void logged.push({ level: 'info', message }),
    warn: (message) => void logged.push({ level: 'warn', message }),
    error: (message) => void logged.push({ level: 'error', message }),
  };
  const clients = new Map<string, ReturnType<typeof createUpstreamClient>>();
  const deps: RegistryDeps = {
    stores: { tags, manifests: raw, links: raw, blobs: noBlobs, leases: raw, listings: raw },
    resolve: createRuleResolver(config.rules),
    mirrorName: createMirrorNames(config.rules, config.defaultRule),
    upstreamFor: (rule) => {
      if (!clients.has(rule.prefix)) clients.set(rule.prefix, createUpstreamClient(rule, { fetchImpl: responder.fetchImpl }));
      return clients.get(rule.prefix)!;
    },
    maxManifestBytes: config.maxManifestBytes,
    fill: config.blobFill,
    log,
    now: () => T0, // the index clock stands still: every check moves its tag's dueAt to T0 + 1 h
    onTagMoved: (c) => void changes.push(c),
  };
  const { manifests } = createRegistry(deps);
  return { refresher: createRefresher(deps, manifests, config.refresh), reads, responder, changes, logged, raw };
}

/** HEAD paths asked (each once, or the test fails) as `name:tag` keys, sorted. */
function headKeys(r: Responder): string[] {
  const byPath = new Map(synth.map((t) => [headPath(t), keyOf(t)]));
  return [...r.heads.keys()].map((p) => byPath.get(p) ?? `unexpected ${p}`).sort();
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

// ---------------------------------------------------------------------------------------------------------

describe('refresh of 10,000 cached tags', () => {
  it('one pass: one HEAD per due tag within the cap, a GET only for the 50 moved, reading only due items', async () => {
    const reg = await openRegistry();
    const report = await reg.refresher.refreshDue();

    expect(report).toMatchObject({ checked: 9_000, unchanged: 8_950, moved: 50, gone: 0, errors: 0, stoppedEarly: false });

    // Upstream: exactly one HEAD per due tag path, none for the 1,000 not due; GETs only for moved ones, by digest.
    expect(sum([...reg.responder.heads.values()])).toBe(9_000);
    expect([...reg.responder.heads.values()].every((n) => n === 1)).toBe(true);
    expect(headKeys(reg.responder)).toEqual(dueKeys);
    expect(synth.filter((t) => !t.due && reg.responder.heads.has(headPath(t)))).toEqual([]);
    const movedTags = synth.filter((t) => t.moved);
    expect(movedTags).toHaveLength(50);
    expect(reg.responder.gets.sort()).toEqual(movedTags.map((t) => `/v2/${t.repo}/manifests/${t.upstream.digest}`).sort());
    expect(reg.responder.other).toEqual([]);

    // The rule's cap: never more than 8 upstream requests at once, and the pass did use all 8.
    expect(reg.responder.maxInFlight).toBeLessThanOrEqual(CONCURRENCY);
    expect(reg.responder.maxInFlight).toBe(CONCURRENCY);

    // Reads only due items: listDueTags returned each due tag once, nothing else, then one empty answer;
    // the pass never listed repositories or tags, nor read tags one by one.
    const dueReads = reg.reads.due;
    expect(sum(dueReads.map((d) => d.keys.length))).toBe(9_000);
    expect(dueReads.flatMap((d) => d.keys).sort()).toEqual(dueKeys);
    expect(sum(dueReads.map((d) => d.notDue))).toBe(0);
    expect(dueReads.at(-1)!.keys).toEqual([]);
    expect(dueReads).toHaveLength(Math.ceil(9_000 / config.refresh.batchSize) + 1);
    expect(dueReads.every((d) => d.limit <= config.refresh.batchSize)).toBe(true);
    expect(reg.reads).toMatchObject({ getTag: 0, listTags: 0, listRepositories: 0 });
    // Writes: the check of each unchanged tag is recorded; a moved tag is re-pointed (putTag); nothing deleted.
    expect(reg.reads).toMatchObject({ recordCheck: 8_950, putTag: 50, deleteTag: 0, touchTag: 0 });

    // The index afterwards: every due tag re-checked and due again in 1 h; moved tags point at the new digest;
    // the not-due tags untouched.
    const all = new Map((await reg.raw.listDueTags(Number.MAX_SAFE_INTEGER, 2 * TAGS)).map((t) => [keyOf(t), t] as const));
    expect(all.size).toBe(TAGS);
    const wrong: string[] = [];
    for (const t of synth) {
      const e = all.get(keyOf(t))!;
      if (t.due) {
        if (e.dueAt !== T0 + HOUR || e.checkedAt !== T0 || e.lastCheck?.result !== (t.moved ? 'moved' : 'unchanged')) wrong.push(`${keyOf(t)} not re-checked`);
        if (e.digest !== t.upstream.digest) wrong.push(`${keyOf(t)} points at ${e.digest}`);
      } else if (e.dueAt !== t.dueAt || e.checkedAt !== t.dueAt - HOUR || e.lastCheck !== undefined) {
        wrong.push(`${keyOf(t)} (not due) was touched`);
      }
    }
    expect(wrong).toEqual([]);
    expect(reg.changes).toHaveLength(50);
    expect(reg.changes.map((c) => `${c.name}:${c.tag}`).sort()).toEqual(movedTags.map(keyOf).sort());
    expect(reg.logged.filter((l) => l.level === 'warn' || l.level === 'error')).toEqual([]);

    // Nothing is due any more: a second pass reads one empty answer and asks the upstream nothing.
    reg.responder.heads.clear();
    const again = await reg.refresher.refreshDue();
    expect(again).toMatchObject({ checked: 0, stoppedEarly: false });
    expect(reg.responder.heads.size).toBe(0);
  });

  it('the SQLite due query is answered from the index on due_at, not a scan of the tags table', () => {
    // The schema is the adapter's (created by openSqliteIndex); the statement is the one in sqlite-index.ts.
    const dir = mkdtempSync(join(tmpdir(), 'pt-refresh-scale-'));
    try {
      openSqliteIndex(join(dir, 'index.db')).close();
      const db = new Database(join(dir, 'index.db'), { readonly: true });
      try {
        const plan = db
          .prepare('EXPLAIN QUERY PLAN SELECT * FROM tags WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?')
          .all(T0, 100) as Array<{ detail: string }>;
        expect(plan.map((p) => p.detail).join('\n')).toMatch(/SEARCH tags USING INDEX tags_due/);
      } finally {
        db.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('resumes where it stopped: cut by maxTags, then by the deadline, then finished; no tag checked twice', async () => {
    const reg = await openRegistry();
    const headTotal = () => sum([...reg.responder.heads.values()]);
    const pathOfKey = new Map(synth.map((t) => [keyOf(t), headPath(t)]));

    // 1. Cut by maxTags a third of the way: it read what it checked, plus one item to learn that more are due.
    const first = await reg.refresher.refreshDue({ maxTags: 3_000 });
    expect(first).toMatchObject({ checked: 3_000, stoppedEarly: true, errors: 0 });
    expect(headTotal()).toBe(3_000);
    expect(sum(reg.reads.due.map((d) => d.keys.length))).toBe(3_001);
    const headsAfterFirst = new Set(reg.responder.heads.keys());

    // 2. Cut by the deadline. The run's deadline is wall-clock time: make it pass, deterministically, as the
    //    run's 3,000th HEAD is answered. Checks already in flight finish; queued ones stay due.
    const readsBefore = reg.reads.due.length;
    const realNow = Date.now.bind(Date);
    let jumped = false;
    vi.spyOn(Date, 'now').mockImplementation(() => realNow() + (jumped ? 2 * HOUR : 0));
    reg.responder.onHead = (n) => {
      if (n === 6_000) jumped = true;
    };
    const second = await reg.refresher.refreshDue({ deadline: realNow() + 10 * 60 * 1000 });
    vi.restoreAllMocks();
    reg.responder.onHead = undefined;
    expect(second).toMatchObject({ stoppedEarly: true, errors: 0 });
    expect(second.checked).toBeGreaterThanOrEqual(3_000);
    expect(second.checked).toBeLessThanOrEqual(3_000 + CONCURRENCY - 1); // at most 7 others were in flight
    expect(headTotal()).toBe(6_000 + (second.checked - 3_000)); // no HEAD was started and its answer dropped
    // It never re-read a tag the first run had checked.
    const secondReads = reg.reads.due.slice(readsBefore).flatMap((d) => d.keys);
    expect(secondReads.filter((k) => headsAfterFirst.has(pathOfKey.get(k)!))).toEqual([]);

    // 3. Finishes the rest.
    const third = await reg.refresher.refreshDue();
    expect(third).toMatchObject({ checked: 9_000 - first.checked - second.checked, stoppedEarly: false, errors: 0 });
    expect(reg.reads.due.at(-1)!.keys).toEqual([]);

    // Together: every due tag exactly once, upstream and index alike.
    expect(first.moved + second.moved + third.moved).toBe(50);
    expect(first.unchanged + second.unchanged + third.unchanged).toBe(8_950);
    expect([...reg.responder.heads.values()].every((n) => n === 1)).toBe(true);
    expect(headKeys(reg.responder)).toEqual(dueKeys);
    expect(reg.responder.gets).toHaveLength(50);
    expect(reg.reads.recordCheck + reg.reads.putTag).toBe(9_000);
    expect(reg.responder.maxInFlight).toBe(CONCURRENCY);
    expect(reg.reads).toMatchObject({ getTag: 0, listTags: 0, listRepositories: 0 });

    expect(await reg.refresher.refreshDue()).toMatchObject({ checked: 0, stoppedEarly: false });
  });
});
