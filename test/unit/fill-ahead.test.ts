/**
 * When fills ahead start (shared/registry/fill-ahead.ts): dispatched at once where fills run elsewhere; queued
 * where they run in this process, started one per tick while the process is idle or no fill runs, in the order the
 * hints gave, each waiting at most MAX_WAIT_MS, at most MAX_QUEUED waiting. The process's busyness and running
 * fills are stand-ins here (a test cannot make the event loop busy on demand); fake timers drive the ticks.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { createFillAhead, MAX_QUEUED, MAX_QUEUED_PER_RULE, MAX_WAIT_MS, TICK_MS } from '../../shared/registry/fill-ahead.js';
import type { PullHints } from '../../shared/registry/pull-hints.js';
import type { ResolvedName } from '../../shared/registry/rules.js';

const d = (i: number) => `sha256:${String(i).padStart(64, '0')}` as Digest;
const resolved = { name: 'p/app', rule: { prefix: 'p' } } as ResolvedName;

function setup(opts: { inProcess?: boolean; ahead?: Digest[] } = {}) {
  const state = { busy: true, running: 1, now: 1_000_000 };
  const started: Digest[] = [];
  const warnings: Array<Record<string, unknown>> = [];
  const startedAhead: Digest[] = [];
  const hints = {
    ahead: () => opts.ahead ?? [d(2), d(3), d(4)],
    startedAhead: (_name: string, digest: Digest) => void startedAhead.push(digest),
  } as unknown as PullHints;
  const { fillAhead, asked } = createFillAhead({
    hints,
    log: { debug() {}, info() {}, warn: (_m: string, extra: Record<string, unknown>) => void warnings.push(extra), error() {} },
    inProcess: opts.inProcess ?? true,
    running: () => state.running,
    busy: () => state.busy,
    now: () => state.now,
    async startFill(_r, digest) {
      started.push(digest);
      if (digest === d(99)) throw new Error('lease store unavailable');
      return digest === d(3) ? 'running' : 'started';
    },
  });
  const tick = async (n = 1) => {
    for (let i = 0; i < n; i++) await vi.advanceTimersByTimeAsync(TICK_MS);
  };
  return { state, started, warnings, startedAhead, fillAhead, asked, tick };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('fills ahead, where fills run in this process', () => {
  it('wait while the process is busy and a fill runs, then start one per tick in the hints\' order', async () => {
    const t = setup();
    await t.fillAhead(resolved, d(1));
    expect(t.started).toEqual([]); // never at once: the triggering request's own fill comes first
    await t.tick(5);
    expect(t.started).toEqual([]);
    t.state.busy = false;
    await t.tick();
    expect(t.started).toEqual([d(2)]);
    await t.tick();
    expect(t.started).toEqual([d(2), d(3)]);
    t.state.busy = true; // busy again (the fills just started): the last one waits
    await t.tick(3);
    expect(t.started).toEqual([d(2), d(3)]);
    t.state.running = 0; // busy, but with no fill running (serving bytes, say): the next starts
    await t.tick();
    expect(t.started).toEqual([d(2), d(3), d(4)]);
    // Only a fill this starter started counts as filled ahead (d(3) was running already).
    expect(t.startedAhead).toEqual([d(2), d(4)]);
    await t.tick(10);
    expect(t.started).toHaveLength(3);
  });

  it('drop a queued fill once the client asks for its blob under that name (its own GET fills it)', async () => {
    const t = setup();
    await t.fillAhead(resolved, d(1));
    t.asked('p/other', d(2)); // another name's request leaves this name's queue alone
    t.asked('p/app', d(3));
    t.state.busy = false;
    await t.tick(5);
    expect(t.started).toEqual([d(2), d(4)]);
  });

  it('a fill the client asks for while its start is in flight is not marked as filled ahead (the client\'s GET was the miss)', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const startedAhead: Digest[] = [];
    const { fillAhead, asked } = createFillAhead({
      hints: { ahead: () => [d(2), d(3)], startedAhead: (_n: string, digest: Digest) => void startedAhead.push(digest) } as unknown as PullHints,
      log: { debug() {}, info() {}, warn() {}, error() {} },
      inProcess: false, // started at once: the race is the same as the queue's
      running: () => 0,
      async startFill(_r, digest) {
        if (digest === d(2)) await held; // the lease read of this start is slow
        return 'started';
      },
    });
    const filling = fillAhead(resolved, d(1));
    await vi.advanceTimersByTimeAsync(0);
    asked('p/app', d(2)); // the client's GET of d(2) arrives meanwhile (and is counted as the miss)
    release();
    await filling;
    expect(startedAhead).toEqual([d(3)]);
  });

  it('drop what waited longer than MAX_WAIT_MS: the client\'s own GET fills it', async () => {
    const t = setup();
    await t.fillAhead(resolved, d(1));
    t.state.now += MAX_WAIT_MS + 1;
    t.state.busy = false;
    await t.tick(5);
    expect(t.started).toEqual([]);
    await t.fillAhead(resolved, d(1)); // a later miss queues afresh
    await t.tick();
    expect(t.started).toEqual([d(2)]);
  });

  it(`keep at most ${MAX_QUEUED_PER_RULE} waiting per rule and ${MAX_QUEUED} in all, the newest`, async () => {
    const many = Array.from({ length: MAX_QUEUED_PER_RULE + 10 }, (_, i) => d(1000 + i));
    const t = setup({ ahead: many });
    const other = { name: 'q/app', rule: { prefix: 'q' } } as ResolvedName;
    await t.fillAhead(other, d(1)); // rule q: the first 42 → its newest 32
    for (let r = 0; r < 20; r++) await t.fillAhead({ name: `p/app${r}`, rule: { prefix: `p${r}` } } as ResolvedName, d(1)); // 20 rules × 32 → 256 in all
    await t.fillAhead(resolved, d(1)); // rule p: 32 more, pushing out the oldest (rule q's) in all
    t.state.busy = false;
    await t.tick();
    // 22 rules queued 32 each; the newest 256 stay: rules p13…p19 and p, 32 each.
    expect(t.started).toEqual([d(1010)]);
    await t.tick(MAX_QUEUED + 5);
    expect(t.started).toHaveLength(MAX_QUEUED);
    expect(t.started.slice(-MAX_QUEUED_PER_RULE)).toEqual(many.slice(10));
  });

  it('one rule\'s misses of many names keep another rule\'s queued fills (the attacker review\'s probe)', async () => {
    const t = setup({ ahead: [d(2), d(3), d(4), d(5)] });
    const b = { name: 'b/app', rule: { prefix: 'b' } } as ResolvedName;
    await t.fillAhead(b, d(1));
    for (let n = 0; n < 64; n++) await t.fillAhead({ name: `a/x${n}`, rule: { prefix: 'a' } } as ResolvedName, d(1));
    t.state.busy = false;
    await t.tick(MAX_QUEUED + 5);
    expect(t.started.slice(0, 4)).toEqual([d(2), d(3), d(4), d(5)]); // b's, first in line
    expect(t.started).toHaveLength(4 + MAX_QUEUED_PER_RULE);
  });

  it('a fill that cannot start is logged, not thrown, and the next one still starts', async () => {
    const t = setup({ ahead: [d(99), d(2)] });
    await t.fillAhead(resolved, d(1));
    t.state.busy = false;
    await t.tick(2);
    expect(t.started).toEqual([d(99), d(2)]);
    expect(t.warnings).toEqual([{ name: 'p/app', digest: d(99), reason: 'lease store unavailable' }]);
  });
});

describe('fills ahead, where each fill is dispatched to another process (AWS)', () => {
  it('all start before fillAhead resolves, busy or not', async () => {
    const t = setup({ inProcess: false });
    await t.fillAhead(resolved, d(1));
    expect(t.started).toEqual([d(2), d(3), d(4)]);
    expect(t.startedAhead).toEqual([d(2), d(4)]);
  });
});
