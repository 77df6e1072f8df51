/**
 * The minimum rate a fill keeps up while it runs (shared/registry/fill-lease.ts `rateWindow`), on top of its
 * overall deadline: an upstream announcing a huge size and then trickling (a byte every 30 s, under the client's
 * stall timer) is cut within about two minutes, not at its ~25 h deadline. The clock is injected: `rateWindow`
 * takes the time as an argument, and the watchdog runs under vitest's fake timers (its `setInterval` and
 * `Date.now`), with a stub lease store (the heartbeat always holds).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import type { FillSettings } from '../../shared/registry/deps.js';
import { fillDeadline, rateWindow, startFillWatchdog, type FillProgress } from '../../shared/registry/fill-lease.js';
import type { Stores } from '../../shared/store/ports.js';
import { silentLog } from '../support/harness.js';

afterEach(() => void vi.useRealTimers());

/** The defaults of `blobFill` (config.ts). */
const SETTINGS: FillSettings = { waitSeconds: 25, maxHops: 3, leaseSeconds: 900, staleLeaseSeconds: 10, minBytesPerSecond: 65_536, deadlineGraceSeconds: 60 };
const T0 = 1_000_000;
const SIX_GB = 6_000_000_000;

/** Feeds `check` a tick every `everyMs` from T0 to `untilMs` (after T0), bytes from `bytesAt(ms since T0)`; the first verdict. */
function run(progress: FillProgress, bytesAt: (ms: number) => number, everyMs: number, untilMs: number) {
  const window = rateWindow(SETTINGS);
  for (let t = 0; t <= untilMs; t += everyMs) {
    progress.bytes = bytesAt(t);
    const short = window.check(progress, T0 + t);
    if (short !== undefined) return { atMs: t, bytes: short };
  }
  return undefined;
}

describe('rateWindow (injected clock)', () => {
  it('cuts a trickle (1 byte per 30 s, 6 GB announced) once grace + one window passed, long before its deadline', () => {
    const progress: FillProgress = { phase: 'transferring', bytes: 0, size: SIX_GB, startedAt: T0 };
    const verdict = run(progress, (t) => 1 + Math.floor(t / 30_000), 2_500, 3_600_000);
    // The first tick at or past grace (60 s) + window (60 s), with 2 bytes received over the last 60 s.
    expect(verdict).toEqual({ atMs: 120_000, bytes: 2 });
    expect(fillDeadline(progress, SETTINGS) - T0).toBe(60_000 + (SIX_GB / 65_536) * 1000); // ~25.5 h: the old bound
  });

  it('never cuts a fill at the minimum rate exactly, nor one just above it, over an hour', () => {
    for (const rate of [65_536, 70_000]) {
      const progress: FillProgress = { phase: 'transferring', bytes: 0, size: SIX_GB, startedAt: T0 };
      expect(run(progress, (t) => Math.floor((t / 1000) * rate), 2_500, 3_600_000)).toBeUndefined();
    }
  });

  it('does not cut a fill just above the rate whose tick was delayed by a busy event loop (the bytes of the stall read after it)', () => {
    for (const [rate, stallMs] of [[1.02, 2_500], [1.05, 5_000], [1.1, 10_000]] as const) {
      const window = rateWindow(SETTINGS);
      const progress: FillProgress = { phase: 'transferring', bytes: 0, size: SIX_GB, startedAt: T0 };
      const bps = rate * SETTINGS.minBytesPerSecond;
      let verdict: number | undefined;
      for (let t = 0; t <= 3_600_000 && verdict === undefined; t += 2_500) {
        // From 300 s the loop stalls for `stallMs`: the tick at its end still sees the bytes from before it.
        const seen = t >= 300_000 && t < 300_000 + stallMs + 2_500 ? 300_000 : t;
        progress.bytes = Math.floor((seen / 1000) * bps);
        verdict = window.check(progress, T0 + t);
      }
      expect(verdict, `${rate}× the rate, ${stallMs} ms stall`).toBeUndefined();
    }
  });

  it('cuts a fill that was fast and then stalled, though its average over the whole transfer is well above the rate', () => {
    const progress: FillProgress = { phase: 'transferring', bytes: 0, size: SIX_GB, startedAt: T0 };
    // 10 MB/s for 5 minutes (3 GB), then 100 bytes/s.
    const bytesAt = (t: number) => (t <= 300_000 ? t * 10_000 : 3_000_000_000 + Math.floor((t - 300_000) / 10));
    const verdict = run(progress, bytesAt, 2_500, 3_600_000);
    expect(verdict).toEqual({ atMs: 360_000, bytes: 6_000 });
  });

  it('gives no verdict while connecting or committing, and starts its window afresh when transferring starts', () => {
    const window = rateWindow(SETTINGS);
    const progress: FillProgress = { phase: 'connecting', bytes: 0, startedAt: T0 };
    for (let t = 0; t <= 600_000; t += 2_500) expect(window.check(progress, T0 + t)).toBeUndefined();
    progress.phase = 'transferring';
    expect(window.check(progress, T0 + 602_500)).toBeUndefined(); // a fresh window: no sample a window old yet
    expect(window.check(progress, T0 + 662_500)).toBe(0);
    progress.phase = 'committing';
    expect(window.check(progress, T0 + 700_000)).toBeUndefined();
  });

});

describe('startFillWatchdog (fake timers)', () => {
  it('abandons a trickling fill with a 6 GB announced size at grace + one window (2 min), not at its ~25 h deadline, heartbeating until then', async () => {
    vi.useFakeTimers({ now: T0 });
    const heartbeats: number[] = [];
    const stores = { leases: { heartbeatLease: async () => (heartbeats.push(Date.now()), true) } } as unknown as Stores;
    const progress: FillProgress = { phase: 'transferring', bytes: 1, size: SIX_GB, startedAt: T0 };
    const trickle = setInterval(() => progress.bytes++, 30_000);
    const abandoned: Array<{ at: number; reason: string }> = [];
    const stop = startFillWatchdog({
      stores, digest: `sha256:${'0'.repeat(64)}` as Digest, owner: 'o p/x', settings: SETTINGS, progress: () => progress, log: silentLog,
      abandon: (reason) => abandoned.push({ at: Date.now() - T0, reason }),
    });
    await vi.advanceTimersByTimeAsync(600_000);
    clearInterval(trickle);
    stop();
    expect(abandoned).toEqual([{ at: 120_000, reason: 'the fill fell below its minimum rate (2 bytes in the last 60 s, under 65536 bytes/s)' }]);
    expect(heartbeats.length).toBeGreaterThan(0); // it made progress (a byte now and then) until it was cut
    expect(Math.max(...heartbeats) - T0).toBeLessThanOrEqual(120_000);
  });
});
