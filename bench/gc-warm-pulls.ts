/**
 * The store writes last-pulled times add to warm pulls, for bench/gc-scale.ts: `pulls` warm pulls (a tag GET and a
 * manifest GET by digest each) through the registry on the embedded store, within one touch interval, then the
 * same after the interval passed (injected clock). Counts every store write method called.
 */
import { createHarness } from '../test/support/harness.js';
import { seedImage, startFakeUpstream } from '../test/support/fake-upstream.js';

const WRITES = /^(put|record|touch|delete|link|acquire|release|heartbeat|add|unpublish|republish|remove|drop)/;

/** Extra store writes per `pulls` warm pulls: within the touch interval, and right after it passed. */
export async function warmPullWrites(pulls: number): Promise<{ pulls: number; writesWithinInterval: number; writesAfterInterval: number }> {
  const up = await startFakeUpstream();
  const h = await createHarness([{ prefix: 'local', upstream: up.url, ttlSeconds: 86_400 }], { lifecycle: { touchIntervalSeconds: 3600 } });
  try {
    const img = seedImage(up, 'app', 'latest', [Buffer.alloc(1000, 'x')]);
    await h.request('GET', '/v2/local/app/manifests/latest');
    const writes = async () => {
      h.storeCalls.length = 0;
      for (let i = 0; i < pulls; i++) {
        await h.request('GET', '/v2/local/app/manifests/latest');
        await h.request('GET', `/v2/local/app/manifests/${img.digest}`);
      }
      return h.storeCalls.filter((c) => WRITES.test(c.method)).length;
    };
    const writesWithinInterval = await writes();
    h.clock.now += 3601 * 1000;
    const writesAfterInterval = await writes();
    return { pulls, writesWithinInterval, writesAfterInterval };
  } finally {
    h.close();
    await up.close();
  }
}
