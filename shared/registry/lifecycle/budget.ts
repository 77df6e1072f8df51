/**
 * Budgets (`maxBytes`, per rule and cache-wide): when stored bytes exceed one, eviction units (repository.ts) are
 * evicted least recently pulled first until the bytes fit. The bytes freed are counted exactly as they go (a
 * manifest's body; a blob once no manifest of that rule — or, cache-wide, of any rule — references it), so
 * shared layers do not make a pass evict more than needed. Memory: the oldest {@link MAX_CANDIDATES} units per
 * budget, never every unit; a budget that needs more is met over several passes.
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

/** A budget still exceeded after eviction: only kept or recently pulled content is left to evict. */
export interface OverBudget {
  /** A rule prefix, or `cache` for the cache-wide budget. */
  scope: string;
  storedBytes: number;
  maxBytes: number;
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

/**
 * Evicts until every budget fits `usage` (updated in place). `listRepositories` pages the store's repositories.
 * Returns the budgets still exceeded.
 */
export async function enforceBudgets(
  c: Collector,
  deps: Pick<RegistryDeps, 'resolve' | 'stores'>,
  settings: LifecycleSettings,
  policyOf: (rule: string) => Policy,
  usage: Usage,
  deadline: number,
): Promise<OverBudget[]> {
  const over = (rule: string) => {
    const max = policyOf(rule).maxBytes;
    return max !== undefined && (usage.rules[rule] ?? 0) > max;
  };
  const cacheOver = () => settings.maxBytes !== undefined && usage.total > settings.maxBytes;
  const rulesOver = Object.keys(usage.rules).filter(over);
  if (rulesOver.length === 0 && !cacheOver()) return [];

  // One pass over the repositories collects the oldest evictable units per budget.
  const protectFrom = c.now() - settings.protectMs;
  const perRule = new Map(rulesOver.map((r) => [r, oldest(MAX_CANDIDATES)]));
  const cacheWide = oldest(MAX_CANDIDATES);
  for (let last: string | undefined, page = 0; page < 100_000 && Date.now() < deadline; page++) {
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

  const evicted = new Set<EvictionUnit>();
  const evict = async (u: EvictionUnit) => {
    evicted.add(u);
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
  };
  for (const [rule, candidates] of perRule) {
    for (const u of candidates.units) {
      if (!over(rule) || Date.now() >= deadline) break;
      await evict(u);
    }
  }
  for (const u of cacheWide.units) {
    if (!cacheOver() || Date.now() >= deadline) break;
    if (!evicted.has(u)) await evict(u);
  }
  const left: OverBudget[] = Object.keys(usage.rules).filter(over).map((r) => ({ scope: r, storedBytes: usage.rules[r], maxBytes: policyOf(r).maxBytes! }));
  if (cacheOver()) left.push({ scope: 'cache', storedBytes: usage.total, maxBytes: settings.maxBytes! });
  return left;
}
