/**
 * Budgets (`maxBytes`, per rule and cache-wide): when stored bytes exceed one, eviction units (repository.ts) are
 * evicted least recently pulled first until the bytes fit. The bytes freed are counted exactly as they go (a
 * manifest's body; a blob once no manifest of that rule — or, cache-wide, of any rule — references it), so
 * shared layers do not make a pass evict more than needed. Memory: the oldest {@link MAX_CANDIDATES} units per
 * budget, never every unit; a budget that needs more takes further rounds in the same pass (each lists the
 * repositories again), and what the pass's deadline leaves over is reported (`reason: 'next-pass'`) and met by the
 * next pass.
 * Never evicted: units with a `keepTags` tag, and units pulled or stored within the protection window (the touch
 * interval plus the grace period) — what remains over a budget after that is reported as kept content alone.
 */
import type { Digest } from '../../oci/digest.js';
import type { RegistryDeps } from '../deps.js';
import { collectRepository, releaseBlobs, type Collector } from './collect.js';
import type { LifecycleSettings, Policy } from './policy.js';
import { ruleOfName } from './policy.js';
import { readRepository, unitsOf, type EvictionUnit } from './repository.js';

/** Units remembered per budget while looking for the least recently pulled ones. */
export const MAX_CANDIDATES = 2000;

/** Stored bytes per rule ('' = names no rule serves) and in all, as a pass measured them. */
export interface Usage {
  rules: Record<string, number>;
  total: number;
}

/** A budget still exceeded after a pass's evictions. Bytes. */
export interface OverBudget {
  /** A rule prefix, or `cache` for the cache-wide budget. */
  scope: string;
  storedBytes: number;
  maxBytes: number;
  /**
   * `kept-content`: only content that is never evicted is left (a `keepTags` match, or pulled within the protection
   * window); `next-pass`: evictable content is left, the pass ran out of time (or rounds) and the next one goes on.
   */
  reason: 'kept-content' | 'next-pass';
}

/** Keeps the `max` oldest units (by pulledAt) of what it is offered. */
function oldest(max: number) {
  const units: EvictionUnit[] = [];
  return {
    offer(u: EvictionUnit) {
      if (units.length >= max && u.pulledAt >= units[units.length - 1].pulledAt) return;
      let i = units.length;
      while (i > 0 && units[i - 1].pulledAt > u.pulledAt) i--;
      units.splice(i, 0, u);
      if (units.length > max) units.pop();
    },
    units,
  };
}

/** Rounds of candidate collection in one pass (each lists every repository once); the deadline usually ends it first. */
export const MAX_ROUNDS = 50;

/**
 * Evicts until every budget fits `usage` (updated in place). `listRepositories` pages the store's repositories.
 * A round collects the oldest `maxCandidates` (default {@link MAX_CANDIDATES}) evictable units per budget and evicts
 * them in order until the budget fits; a budget that needs more takes more rounds within the pass, until `deadline`
 * (or {@link MAX_ROUNDS}), and the rest is left to the next pass. Returns the budgets still exceeded, each saying
 * why: only kept content left, or evictable content left for the next pass.
 */
export async function enforceBudgets(
  c: Collector,
  deps: Pick<RegistryDeps, 'resolve' | 'stores'>,
  settings: LifecycleSettings,
  policyOf: (rule: string) => Policy,
  usage: Usage,
  deadline: number,
): Promise<OverBudget[]> {
  const maxCandidates = settings.maxCandidates ?? MAX_CANDIDATES;
  const over = (rule: string) => {
    const max = policyOf(rule).maxBytes;
    return max !== undefined && (usage.rules[rule] ?? 0) > max;
  };
  const cacheOver = () => settings.maxBytes !== undefined && usage.total > settings.maxBytes;
  const stopped = () => Date.now() >= deadline;
  /**
   * Budgets (rule prefix, or `cache`) that may have evictable content left: those whose last round found a full
   * candidate list or was cut short; before any round, every budget over.
   */
  const moreLeft = new Set<string>(Object.keys(usage.rules).filter(over));
  if (cacheOver()) moreLeft.add('cache');

  const evict = async (u: EvictionUnit) => {
    const rule = ruleOfName(deps, u.name);
    const { deletedManifests, released } = await collectRepository(
      c, u.name, { now: c.now(), evictTags: new Set(u.tags), dropManifests: new Set(u.manifests) }, { conditional: true },
    );
    for (const m of deletedManifests) {
      usage.rules[rule] = (usage.rules[rule] ?? 0) - m.size;
      usage.total -= m.size;
    }
    const gone = new Set((await releaseBlobs(c, released)).map((b) => b.digest));
    const seen = new Set<Digest>();
    for (const b of released) {
      if (seen.has(b.digest)) continue;
      seen.add(b.digest);
      if (gone.has(b.digest)) {
        usage.total -= b.size;
        usage.rules[rule] = (usage.rules[rule] ?? 0) - b.size;
      } else if ((await c.reaper.storedBlob(b.digest))?.state === 'committed' && !(await c.index.blobReferrers(b.digest)).includes(rule)) {
        usage.rules[rule] = (usage.rules[rule] ?? 0) - b.size; // still stored for another rule, no longer for this one
      }
    }
    return deletedManifests.length > 0;
  };

  for (let round = 0; round < MAX_ROUNDS && !stopped(); round++) {
    const rulesOver = Object.keys(usage.rules).filter(over);
    if (rulesOver.length === 0 && !cacheOver()) break;
    // One pass over the repositories collects the oldest evictable units per budget.
    const protectFrom = c.now() - settings.protectMs;
    const perRule = new Map(rulesOver.map((r) => [r, oldest(maxCandidates)]));
    const cacheWide = oldest(maxCandidates);
    for (let last: string | undefined, page = 0; page < 100_000 && !stopped(); page++) {
      const names = await deps.stores.tags.listRepositories({ last, n: 1000 });
      for (const name of names) {
        const rule = ruleOfName(deps, name);
        for (const u of unitsOf(await readRepository(c.index, name), policyOf(rule).keepTags)) {
          if (u.keep || u.pulledAt >= protectFrom) continue;
          perRule.get(rule)?.offer(u);
          if (cacheOver()) cacheWide.offer(u);
        }
      }
      if (names.length < 1000) break;
      last = names[names.length - 1];
    }
    moreLeft.clear();
    for (const [rule, candidates] of perRule) if (candidates.units.length >= maxCandidates) moreLeft.add(rule);
    if (cacheWide.units.length >= maxCandidates) moreLeft.add('cache');

    const evicted = new Set<EvictionUnit>();
    let progress = false;
    for (const [rule, candidates] of perRule) {
      for (const u of candidates.units) {
        if (!over(rule) || stopped()) break;
        evicted.add(u);
        if (await evict(u)) progress = true;
      }
      if (stopped() && over(rule)) moreLeft.add(rule);
    }
    for (const u of cacheWide.units) {
      if (!cacheOver() || stopped()) break;
      if (!evicted.has(u) && (await evict(u))) progress = true;
    }
    if (stopped() && cacheOver()) moreLeft.add('cache');
    // A round that evicted nothing will not do better next time (only kept content, or everything pulled since).
    if (!progress || moreLeft.size === 0) break;
  }
  const reason = (scope: string): OverBudget['reason'] => (moreLeft.has(scope) ? 'next-pass' : 'kept-content');
  const left: OverBudget[] = Object.keys(usage.rules).filter(over).map((r) => ({ scope: r, storedBytes: usage.rules[r], maxBytes: policyOf(r).maxBytes!, reason: reason(r) }));
  if (cacheOver()) left.push({ scope: 'cache', storedBytes: usage.total, maxBytes: settings.maxBytes!, reason: reason('cache') });
  return left;
}
