/**
 * "Does not exist" answers of an upstream, remembered for the rule's `negativeCacheSeconds` so repeated misses
 * (clients retry) do not hammer the upstream. Keys carry the cache-side name, so what one name's upstream said
 * never answers for another. Expiry runs on the registry clock (`deps.now`, injected in tests) read on every
 * lookup, not on the process's own monotonic clock; at most `max` keys (least recently used go first). A value may be
 * kept with a key (the signature policy remembers why it refused a manifest).
 */
import { LRUCache } from 'lru-cache';

/** A negative cache: `remember` a key for `ttlMs` milliseconds (nothing when ≤ 0); `has`/`get` while it lasts. */
export interface NegativeCache<V extends string | true = true> {
  remember(key: string, ttlMs: number, ...value: V extends true ? [] : [V]): void;
  has(key: string): boolean;
  /** The value remembered with `key`, while it lasts. */
  get(key: string): V | undefined;
}

/** Creates a negative cache on the clock `now` (milliseconds since the epoch). */
export function createNegativeCache<V extends string | true = true>(now: () => number, max = 10_000): NegativeCache<V> {
  const entries = new LRUCache<string, V>({ max, perf: { now }, ttlResolution: 0 });
  return {
    remember(key, ttlMs, ...value) {
      if (ttlMs > 0) entries.set(key, (value[0] ?? true) as V, { ttl: ttlMs });
    },
    has: (key) => entries.get(key) !== undefined,
    get: (key) => entries.get(key),
  };
}
