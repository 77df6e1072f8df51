/**
 * The lifecycle of the cache (what it forgets, and the operator's view of what it holds): garbage collection and
 * budgets (gc.ts, which documents the safety design), purge, ls and verify, built once from the registry's
 * dependencies and the config. Used by the CLI (`npx pullthrough gc|purge|ls|verify`) and the `gc` function.
 */
import type { RegistryConfig } from '../../config.js';
import type { RegistryDeps } from '../deps.js';
import { announceRemovals } from '../../store/remembering-stores.js';
import { emptyCounts, type Collector, type Counts } from './collect.js';
import { createGarbageCollector, USAGE_KEY, type GcReport } from './gc.js';
import { listInventory, type RepositoryListing } from './inventory.js';
import { createPolicies } from './policy.js';
import { parsePurgeTarget, purge, type PurgeReport } from './purge.js';
import { verifyStore, type VerifyReport } from './verify.js';

export type { GcReport } from './gc.js';
export type { PurgeReport } from './purge.js';
export type { RepositoryListing } from './inventory.js';
export type { VerifyReport } from './verify.js';

/** The lifecycle operations. */
export interface Lifecycle {
  /** One GC pass (or the rest of an interrupted one) until done or `deadline` (ms epoch). */
  gc(opts?: { dryRun?: boolean; deadline?: number }): Promise<GcReport>;
  /**
   * Purges `<name>[:<tag>|@<digest>]` or a bare rule prefix (purge.ts).
   * @throws RangeError for a target that names no rule or repository, or a malformed digest.
   */
  purge(target: string): Promise<PurgeReport>;
  /** Repositories named `filter`, or under it; all without one. */
  ls(filter?: string): AsyncGenerator<RepositoryListing>;
  /**
   * Re-hashes stored blobs and manifests; `repair` drops the damaged ones. `deadline` (ms epoch) stops the run;
   * `resume` goes on from where the last stopped run was, and saves where this one stops (verify.ts).
   */
  verify(opts: { repair: boolean; deadline?: number; resume?: boolean }): Promise<VerifyReport>;
  /** The usage the last complete GC pass measured (JSON), if any. */
  lastUsage(): Promise<{ at: number; storedBytes: number; rules: GcReport['rules'] } | undefined>;
}

/** Builds the lifecycle; `graceSeconds` from `graceSecondsFor` (config-lifecycle.ts). */
export function createLifecycle(deps: RegistryDeps, config: RegistryConfig, graceSeconds: number): Lifecycle {
  const { settings, policyOf, rules } = createPolicies(config, graceSeconds);
  const collector = (dryRun = false): Collector => {
    if (!deps.stores.lifecycle || !deps.stores.reaper) throw new Error('this store does not support the lifecycle (GC, purge)');
    return { index: deps.stores.lifecycle, reaper: deps.stores.reaper, leases: deps.stores.leases, log: deps.log, now: deps.now, dryRun, counts: emptyCounts() };
  };
  /** After a run that removed something (`removed`): tells the processes remembering records (remembering-stores.ts). */
  async function announcing<R>(run: Promise<R>, removed: (report: R) => boolean): Promise<R> {
    const report = await run;
    if (removed(report) && deps.stores.lifecycle) await announceRemovals(deps.stores.lifecycle, deps.now());
    return report;
  }
  const removedAny = (r: Counts & { dryRun?: boolean }) => !r.dryRun && r.deletedManifests + r.deletedBlobs > 0;
  return {
    gc: (opts) => announcing(createGarbageCollector(deps, settings, policyOf).run(opts), removedAny),
    async purge(target) {
      let parsed;
      try {
        parsed = parsePurgeTarget(deps, rules, target);
      } catch (err) {
        throw new RangeError(`not a purge target: ${(err as Error).message}`);
      }
      return announcing(purge(deps, collector(), parsed, target), removedAny);
    },
    ls: (filter) => listInventory(deps, collector(), filter),
    verify: (opts) => announcing(verifyStore(deps, collector(), opts), (r) => r.repaired && r.damagedBlobs.length + r.damagedManifests.length > 0),
    async lastUsage() {
      const saved = await collector().index.getLifecycleState(USAGE_KEY);
      return saved ? JSON.parse(saved) : undefined;
    },
  };
}
