/**
 * "Does not exist" answers of an upstream, remembered for the rule's `negativeCacheSeconds` so repeated misses
 * (clients retry) do not hammer the upstream. Keys carry the cache-side name, so what one name's upstream said
 * never answers for another. Expiry runs on the registry clock (`deps.now`, injected in tests) read on every
 * lookup, not on the process's own monotonic clock; at most `max` keys (least recently used go first).
 */
import { LRUCache } from 'lru-cache';

/** A negative cache: `remember` a key for `ttlMs` milliseconds (nothing when ≤ 0); `has` while it lasts. */
export interface NegativeCache {
  remember(key: string, ttlMs: number): void;
  has(key: string): boolean;
}

/** Creates a negative cache on the clock `now` (milliseconds since the epoch). */
export function createNegativeCache(now: () => number, max = 10_000): NegativeCache {
  const entries = new LRUCache<string, true>({ max, perf: { now }, ttlResolution: 0 });
  return {
    remember(key, ttlMs) {
      if (ttlMs > 0) entries.set(key, true, { ttl: ttlMs });
    },
    has: (key) => entries.get(key) === true,
  };
}
