/**
 * Garbage collection: one pass keeps the store inside its budgets and policies and removes what nothing needs.
 *
 * ## Why a pull can never be hurt (the design)
 * - **Index records first, bytes last.** A blob is first *unpublished* (its DynamoDB record becomes a tombstone; its
 *   file moves to `trash/`): from that instant a pull sees a miss and refills it from the upstream. Its bytes are
 *   deleted by a later pass only after the grace period `G` (`lifecycle.graceSeconds`, at least twice the signed-URL
 *   lifetime `PULLTHROUGH_URL_TTL_SECONDS`), so every URL handed out before still finds its object.
 * - **Never while a fill holds the digest.** Unpublishing and deleting happen under the digest's fill lease (the
 *   one the miss path takes), so no fill of that digest runs meanwhile; a held lease means "skip, next pass".
 * - **Only what nothing references.** A blob is unpublished only when no reference item names it (every stored
 *   manifest of every repository records one per blob it references: blobs are shared across repositories and
 *   rules). The check runs before and after the unpublish; a reference that appeared in between puts the blob
 *   back. A reference that appears later is a new manifest meeting a blob already gone: an ordinary miss.
 * - **Fills that commit during the sweep.** A blob committed within `G` with no reference is left alone (its
 *   manifest is being stored, or a client fetches it); manifests and tags pulled or stored within the
 *   protection window (touch interval + `G`) are never evicted by expiry or a budget.
 * - **Races with pulls and refreshes.** Tags and manifests are deleted conditionally: only if their last-pulled
 *   time (and a tag's digest) is what the pass read. A pull updates that time at least once per touch interval, a
 *   refill rewrites the manifest, and a refresh that points a tag at an already stored manifest first touches it
 *   (tag-check.ts): each makes the delete fail, or finds the manifest gone and fetches it again.
 * - **Killed half-way.** Every step is idempotent and ordered so that a crash leaves garbage, never a reference to
 *   something missing: a manifest's reference items go after the manifest (DynamoDB journals the two steps and the
 *   next pass finishes them), a tombstone goes before its object (an object left behind is an orphan, deleted
 *   after `G`). The pass saves its phase and cursor (`lifecycle` state `gc`) as it goes; the next run resumes it.
 * - **Caches in memory.** A process may remember a blob record or a manifest for at most `G/2` seconds (the
 *   contract for in-process caches of immutable records): so it forgets a blob before the pass that deletes its
 *   bytes, and never hands out a URL that outlives them. The registry remembers committed blob sizes, links and
 *   manifests by digest (shared/store/remembering-stores.ts: at most min(G/2, 10 min)); a pass that removed anything
 *   ends by announcing it (lifecycle state `forget`), and running processes forget everything within a second.
 *
 * ## A pass
 * 1. finish interrupted manifest deletes; record references of manifests stored before the lifecycle existed;
 *    remove (once per store) listings kept for repositories without content by releases that allowed that;
 * 2. repositories (paged): expiry (`expireAfterUnpulledDays`, `keepTags`), counting the kept manifests' bytes;
 * 3. blobs (every stored object, paged): unpublish unreferenced ones, delete the bytes of those unpublished `G`
 *    ago and of orphans, count the referenced ones per rule (a blob counts once in every rule that references it,
 *    once in the cache-wide total) (sweep.ts);
 * 3b. large manifest bodies, on stores that keep them apart (DynamoDB + S3 `manifests/`, shared by digest): remove
 *    those no stored manifest points to any more, written at least `G` ago; a writer storing one meanwhile keeps
 *    it (protocol: shared/store/dynamodb-manifest-bodies.ts);
 * 4. budgets (budget.ts): evict least recently pulled first until every `maxBytes` fits (the bodies of manifests
 *    evicted here, and by a purge, go with the next pass).
 * Every run also removes what writes killed mid-way left in storage (the filesystem store's temp files of dead
 * writers; never a write in progress): `removedTempFiles`, `removedTempBytes`.
 * No set grows with the store: a repository is held one at a time, blobs are streamed, budgets keep a bounded
 * candidate list. Memory is bounded by the largest repository.
 */
import type { LifecycleIndex } from '../../store/ports.js';
import type { RegistryDeps } from '../deps.js';
import { enforceBudgets, type OverBudget, type Usage } from './budget.js';
import { collectRepository, emptyCounts, releaseBlobs, type Collector, type Counts } from './collect.js';
import { ruleOfName, type LifecycleSettings, type Policy } from './policy.js';
import { readRepository } from './repository.js';
import { SAVE_EVERY, sweepBlobs, sweepManifestBodies, type PassState } from './sweep.js';

/** What a pass did. Counts; bytes; `ms` wall-clock milliseconds. */
export interface GcReport extends Counts {
  dryRun: boolean;
  /** False when the pass stopped at its deadline; the next pass resumes it. */
  complete: boolean;
  /** Bytes stored and served after the pass: blobs counted once, plus manifest bodies. */
  storedBytes: number;
  /** Bytes of unpublished blobs still waiting for the grace period before their objects go. */
  pendingBytes: number;
  /** Stored bytes per rule (a shared blob counts in each rule referencing it), with the rule's budget. */
  rules: Record<string, { storedBytes: number; maxBytes?: number }>;
  /**
   * Budgets still exceeded after the pass: by kept content alone (`reason: 'kept-content'`: keepTags, or pulled
   * within the protection window), or with evictable content the pass had no time left for (`'next-pass'`).
   */
  overBudget: OverBudget[];
  ms: number;
}

const STATE_KEY = 'gc';
/** Lifecycle state key of the last usage a pass measured (for `ls`/`stats`). */
export const USAGE_KEY = 'usage';
const REFS_KEY = 'references';
const REFS_VERSION = 'v2';
/** Lifecycle state of the one-time sweep of listings kept for repositories without content: `v1` when done. */
const LISTINGS_KEY = 'listings';
const LISTINGS_VERSION = 'v1';
/** A saved pass older than this is started afresh rather than resumed (ms). */
const STALE_PASS_MS = 7 * 24 * 60 * 60 * 1000;

/** The garbage collector. */
export interface GarbageCollector {
  /** One pass (or the rest of an interrupted one) until done or `deadline` (ms epoch). */
  run(opts?: { dryRun?: boolean; deadline?: number }): Promise<GcReport>;
}

/** Creates the collector over the registry's stores. */
export function createGarbageCollector(deps: RegistryDeps, settings: LifecycleSettings, policyOf: (rule: string) => Policy): GarbageCollector {
  const { stores } = deps;
  if (!stores.lifecycle || !stores.reaper) throw new Error('this store does not support the lifecycle (GC, purge)');
  const index: LifecycleIndex = stores.lifecycle;
  const reaper = stores.reaper;
  const add = (m: Record<string, number>, k: string, v: number) => void (m[k] = (m[k] ?? 0) + v);

  /**
   * Writes the reference items a store made by an older release lacks, once. A dry run writes nothing (its figures
   * then rest on the references already there). A repository that no rule of this config names (a CLI run without
   * the server's `PULLTHROUGH_CONFIG`) gets no references under an empty rule: it is skipped, logged, and the
   * backfill is left to a pass with the right config.
   */
  async function backfillReferences(c: Collector): Promise<void> {
    // v1: blob reference items; v2: also the body references of large manifest bodies (DynamoDB + S3).
    if (c.dryRun || (await index.getLifecycleState(REFS_KEY)) === REFS_VERSION) return;
    const unruled: string[] = [];
    for (let last: string | undefined, page = 0; page < 100_000; page++) {
      const names = await stores.tags.listRepositories({ last, n: 1000 });
      for (const name of names) {
        const rule = ruleOfName(deps, name);
        if (rule === '') {
          unruled.push(name);
          continue;
        }
        const repo = await readRepository(index, name);
        for (const m of repo.manifests.values()) await index.addBlobReferences(name, m.digest, rule, m.blobs.map((b) => b.digest));
      }
      if (names.length < 1000) break;
      last = names[names.length - 1];
    }
    if (unruled.length > 0) {
      deps.log.warn('repositories that no rule of this config names: run with the server\'s PULLTHROUGH_CONFIG', {
        event: 'gc-unknown-rule', repositories: unruled.length, examples: unruled.slice(0, 5),
      });
      return;
    }
    await index.putLifecycleState(REFS_KEY, REFS_VERSION);
  }

  /**
   * Listings kept by releases that kept them for any repository a client named (tags/list of never-pulled names):
   * removed once per store, resumably (listings written since need content, and go with it: collect.ts).
   */
  async function sweepOrphanListings(c: Collector, stopped: () => boolean): Promise<void> {
    const saved = await index.getLifecycleState(LISTINGS_KEY);
    if (saved === LISTINGS_VERSION) return;
    const after = saved === undefined ? undefined : (JSON.parse(saved) as { after?: string }).after;
    const { removed, next } = await index.sweepListings({ after, dryRun: c.dryRun, stopped });
    if (removed > 0) deps.log.info('listings of repositories without content removed', { removed, dryRun: c.dryRun, complete: next === undefined });
    if (!c.dryRun) await index.putLifecycleState(LISTINGS_KEY, next === undefined ? LISTINGS_VERSION : JSON.stringify({ after: next }));
  }

  return {
    async run(opts = {}) {
      const started = Date.now();
      const dryRun = opts.dryRun ?? false;
      const deadline = opts.deadline ?? started + settings.maxRunMs;
      const now = deps.now();
      const saved = dryRun ? undefined : await index.getLifecycleState(STATE_KEY);
      let state: PassState = saved ? (JSON.parse(saved) as PassState) : undefined!;
      if (!state || now - state.startedAt > STALE_PASS_MS) {
        state = { startedAt: now, phase: 'repositories', manifestBytes: {}, blobBytes: {}, totalBlobBytes: 0, pendingBytes: 0, counts: emptyCounts() };
      }
      const c: Collector = { index, reaper, leases: stores.leases, log: deps.log, now: deps.now, dryRun, counts: state.counts };
      const save = async () => {
        if (!dryRun) await index.putLifecycleState(STATE_KEY, JSON.stringify(state));
      };
      const stopped = () => Date.now() >= deadline;

      await index.finishInterruptedDeletes();
      await backfillReferences(c);
      await sweepOrphanListings(c, stopped);
      const abandoned = await reaper.removeAbandonedWrites?.({ dryRun });
      if (abandoned) {
        // A pass saved by an older version has no such counts yet.
        c.counts.removedTempFiles = (c.counts.removedTempFiles ?? 0) + abandoned.files;
        c.counts.removedTempBytes = (c.counts.removedTempBytes ?? 0) + abandoned.bytes;
      }

      if (state.phase === 'repositories') {
        let handled = 0;
        for (let page = 0; page < 100_000 && !stopped(); page++) {
          const names = await stores.tags.listRepositories({ last: state.cursor, n: 1000 });
          for (const name of names) {
            if (stopped()) break;
            const rule = ruleOfName(deps, name);
            const policy = policyOf(rule);
            const rules = {
              now, keepTags: policy.keepTags, protectFrom: now - settings.protectMs,
              ...(policy.expireAfterMs === undefined ? {} : { expireBefore: now - policy.expireAfterMs }),
            };
            const { released, keptManifests } = await collectRepository(c, name, rules, { conditional: true });
            await releaseBlobs(c, released);
            for (const m of keptManifests) add(state.manifestBytes, rule, m.size);
            state.cursor = name;
            if (++handled % SAVE_EVERY === 0) await save();
          }
          if (names.length < 1000) {
            state.phase = 'blobs';
            state.cursor = undefined;
            break;
          }
        }
        await save();
      }

      if (state.phase === 'blobs' && !stopped()) {
        if (await sweepBlobs(c, state, { graceFrom: now - settings.graceMs, concurrency: settings.concurrency, stopped, save })) {
          state.phase = index.sweepManifestBodies ? 'bodies' : 'budgets';
          state.cursor = undefined;
        }
        await save();
      }
      if (state.phase === 'bodies' && !stopped()) {
        if (await sweepManifestBodies(c, state, { graceFrom: now - settings.graceMs, stopped, save })) {
          state.phase = 'budgets';
          state.cursor = undefined;
        }
        await save();
      }

      let overBudget: OverBudget[] = [];
      const usage: Usage = { rules: {}, total: state.totalBlobBytes };
      for (const [r, v] of Object.entries(state.manifestBytes)) {
        add(usage.rules, r, v);
        usage.total += v;
      }
      for (const [r, v] of Object.entries(state.blobBytes)) add(usage.rules, r, v);
      const complete = state.phase === 'budgets' && !stopped();
      if (complete) {
        overBudget = await enforceBudgets(c, deps, settings, policyOf, usage, deadline);
        if (!dryRun) await index.putLifecycleState(STATE_KEY, undefined);
      }
      const report: GcReport = {
        dryRun, complete, ...c.counts, storedBytes: usage.total, pendingBytes: state.pendingBytes,
        rules: Object.fromEntries(Object.entries(usage.rules).map(([r, b]) => [r, { storedBytes: b, ...(policyOf(r).maxBytes === undefined ? {} : { maxBytes: policyOf(r).maxBytes }) }])),
        overBudget, ms: Date.now() - started,
      };
      if (complete && !dryRun) await index.putLifecycleState(USAGE_KEY, JSON.stringify({ at: deps.now(), storedBytes: report.storedBytes, rules: report.rules }));
      deps.log.info('gc pass done', { ...report });
      return report;
    },
  };
}
