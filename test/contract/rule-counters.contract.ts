/**
 * The contract of the stats counters port (shared/store/counters.ts), run against each adapter: adds add up
 * (also from two writers of one store, as the server and a CLI command are), hour buckets sum into "recent" from
 * the bucket asked for, the total keeps its first time, rules are apart, a rule never counted reads zeros, and
 * buckets older than two days are gone from "recent" whatever is asked.
 */
import { describe, expect, it } from 'vitest';
import { HOUR_MS, KEEP_BUCKETS_MS, noCounts, type RuleCounters, type RuleCounts } from '../../shared/store/counters.js';

/** A store to test, `second` a second writer of the same data (another process), and cleanup. */
export type CountersFactory = () => Promise<{ counters: RuleCounters; second: RuleCounters; close(): Promise<void> }>;

const counts = (over: Partial<RuleCounts>): RuleCounts => ({ ...noCounts(), ...over });

export function describeRuleCountersContract(adapter: string, make: CountersFactory): void {
  describe(`stats counters contract: ${adapter}`, () => {
    const h0 = 1_800_000_000_000 - (1_800_000_000_000 % HOUR_MS);

    it('adds up across calls and writers; recent sums the buckets from sinceHour; the total keeps its first time', async () => {
      const { counters, second, close } = await make();
      try {
        await counters.add('hub', h0, counts({ requests: 3, hits: 2, misses: 1, upstreamRequests: 4, upstreamBytes: 1000, servedBytes: 5000 }), h0 + 5);
        await second.add('hub', h0, counts({ requests: 1, hits: 1, servedBytes: 70 }), h0 + 9);
        await counters.add('hub', h0 + HOUR_MS, counts({ requests: 2, errors: 2 }), h0 + HOUR_MS + 1);
        await counters.add('ghcr', h0 + HOUR_MS, counts({ requests: 7 }), h0 + HOUR_MS + 2);
        const [hub, ghcr, quiet] = await counters.read(['hub', 'ghcr', 'quay'], h0);
        expect(hub).toEqual({
          rule: 'hub',
          recent: counts({ requests: 6, hits: 3, misses: 1, errors: 2, upstreamRequests: 4, upstreamBytes: 1000, servedBytes: 5070 }),
          total: counts({ requests: 6, hits: 3, misses: 1, errors: 2, upstreamRequests: 4, upstreamBytes: 1000, servedBytes: 5070 }),
          since: h0 + 5,
        });
        expect((await second.read(['hub'], h0 + HOUR_MS))[0].recent).toEqual(counts({ requests: 2, errors: 2 }));
        expect(ghcr).toMatchObject({ recent: counts({ requests: 7 }), total: counts({ requests: 7 }), since: h0 + HOUR_MS + 2 });
        expect(quiet).toEqual({ rule: 'quay', recent: noCounts(), total: noCounts() });
      } finally {
        await close();
      }
    });

    it('buckets older than two days leave "recent"; the total keeps them', async () => {
      const { counters, close } = await make();
      try {
        await counters.add('hub', h0, counts({ requests: 5 }), h0);
        const later = h0 + KEEP_BUCKETS_MS + 3 * HOUR_MS;
        await counters.add('hub', later, counts({ requests: 1 }), later);
        const [hub] = await counters.read(['hub'], 0);
        expect(hub.total.requests).toBe(6);
        // SQLite prunes on the next add; DynamoDB's TTL deletes later, so the adapter must not count it either way.
        expect([1, 6]).toContain(hub.recent.requests);
        expect((await counters.read(['hub'], later - 23 * HOUR_MS))[0].recent.requests).toBe(1);
      } finally {
        await close();
      }
    });
  });
}
