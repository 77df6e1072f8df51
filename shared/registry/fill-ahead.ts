/**
 * Starting the fills of layers a client will ask for next (pull-hints.ts picks them).
 *
 * Where fills run in other processes (the AWS fill function: `deps.dispatchFill`), each is dispatched at once:
 * they do not compete with anything here.
 *
 * Where fills run in this process (the local server), they share its one JavaScript thread with the fill the
 * client waits on: receiving, hashing (SHA-256, about 0.6 ms per MiB) and writing every byte, and sending it to the
 * client. Started all at once, four fills of a 112 MiB image split that thread four ways, so the layer the client
 * reads arrived at a quarter of the rate (bench/pull.ts: cold 1.60–1.72× a direct pull with four fills ahead,
 * 1.31–1.52× with none, in the same runs). Yet when the upstream is the bottleneck (a remote registry at tens of
 * MB/s per connection) the thread is mostly idle and fills ahead are what make a serial client fast. So here they
 * wait in a queue and start one at a time, each only when no fill is running in this process or the event loop
 * was less than {@link BUSY_UTILIZATION} busy over the last {@link TICK_MS} (Node's event-loop utilization):
 * CPU-bound, they follow one another; upstream-bound, they start {@link TICK_MS} apart. The first start waits a
 * tick, so the fill that the triggering request starts is running by then.
 *
 * A queued fill leaves the queue once the client asks for its blob under that name ({@link FillAhead.asked}): its
 * own GET fills it, and a late start would only read the stores for nothing.
 *
 * Bounded: at most {@link MAX_QUEUED} waiting, at most {@link MAX_QUEUED_PER_RULE} of one rule (older ones dropped
 * first: one tenant's burst of misses cannot push another's fills out of the queue), each for at most
 * {@link MAX_WAIT_MS}; a dropped or late one costs nothing but the head start (the client's own GET fills the layer). The timer runs only
 * while the queue holds something and never keeps the process alive.
 */
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import type { Digest } from '../oci/digest.js';
import type { Log } from '../observe/log.js';
import type { PullHints } from './pull-hints.js';
import type { ResolvedName } from './rules.js';

/** How often the queue looks whether it may start the next fill (ms). */
export const TICK_MS = 20;
/** Event-loop utilization (0–1) over the last tick below which a fill ahead starts while others run. */
export const BUSY_UTILIZATION = 0.5;
/** Fills waiting to start, at most. */
export const MAX_QUEUED = 256;
/** Fills of one pull-through cache rule waiting to start, at most (eight images' worth of fills ahead). */
export const MAX_QUEUED_PER_RULE = 32;
/** Longest a fill waits to start (ms); a pull asks for its layers within seconds. */
export const MAX_WAIT_MS = 30_000;

/** What the fill-ahead starter needs. */
export interface FillAheadDeps {
  hints: PullHints;
  /** Starts a fill of `digest` for `resolved` (through its lease); `'started'` when this call started it. */
  startFill(resolved: ResolvedName, digest: Digest): Promise<'started' | 'running' | 'stored'>;
  log: Log;
  /** True when fills run in this process (see the file header); false when each is dispatched elsewhere. */
  inProcess: boolean;
  /** Fills running in this process now. */
  running(): number;
  /** Whether this process was busy over the last tick; default: event-loop utilization ≥ {@link BUSY_UTILIZATION}. */
  busy?: () => boolean;
  /** Clock (ms); default `Date.now`. */
  now?: () => number;
}

/** The fill-ahead starter of one blob service. */
export interface FillAhead {
  /**
   * Layer `digest` missed under `resolved.name`: starts (or queues) fills of the next layers. Never throws: failures
   * to start are logged (`fill ahead could not start`).
   */
  fillAhead(resolved: ResolvedName, digest: Digest): Promise<void>;
  /**
   * A client asked for `digest` under `name`: a fill of it still queued for that name is dropped, and one being
   * started is not marked as filled ahead (the client's request is the miss).
   */
  asked(name: string, digest: Digest): void;
}

/** Creates the starter (see the file header). */
export function createFillAhead(deps: FillAheadDeps): FillAhead {
  const { hints, log } = deps;
  const now = deps.now ?? Date.now;
  const busy = deps.busy ?? eventLoopBusy();
  const queue: Array<{ resolved: ResolvedName; digest: Digest; queuedAt: number }> = [];
  let timer: NodeJS.Timeout | undefined;

  // Starts in flight (`<name>\n<digest>`): one the client asks for meanwhile is not marked as filled ahead, since
  // the client's GET was already counted as the miss (marked, the next pull's hit would count as a miss again).
  const starting = new Set<string>();
  async function start(resolved: ResolvedName, digest: Digest): Promise<void> {
    const key = `${resolved.name}\n${digest}`;
    starting.add(key);
    try {
      const outcome = await deps.startFill(resolved, digest);
      if (outcome === 'started' && starting.has(key)) hints.startedAhead(resolved.name, digest);
    } catch (err) {
      log.warn('fill ahead could not start', { name: resolved.name, digest, reason: (err as Error).message });
    } finally {
      starting.delete(key);
    }
  }

  function tick(): void {
    timer = undefined;
    while (queue.length && now() - queue[0].queuedAt > MAX_WAIT_MS) queue.shift();
    // `busy()` is read on every tick, so each reading covers one tick.
    const idle = !busy();
    if (queue.length && (idle || deps.running() === 0)) {
      const next = queue.shift()!;
      void start(next.resolved, next.digest);
    }
    if (queue.length) schedule();
  }

  function schedule(): void {
    timer ??= setTimeout(tick, TICK_MS).unref();
  }

  return {
    asked(name, digest) {
      for (let i = queue.length - 1; i >= 0; i--) if (queue[i].digest === digest && queue[i].resolved.name === name) queue.splice(i, 1);
      starting.delete(`${name}\n${digest}`);
    },
    async fillAhead(resolved, digest) {
      const ahead = hints.ahead(resolved.name, digest);
      if (!deps.inProcess) {
        await Promise.all(ahead.map((d) => start(resolved, d)));
        return;
      }
      for (const d of ahead) queue.push({ resolved, digest: d, queuedAt: now() });
      const rule = resolved.rule.prefix;
      let ofRule = queue.filter((q) => q.resolved.rule.prefix === rule).length;
      for (let i = 0; i < queue.length && ofRule > MAX_QUEUED_PER_RULE; ) {
        if (queue[i].resolved.rule.prefix === rule) {
          queue.splice(i, 1);
          ofRule--;
        } else i++;
      }
      if (queue.length > MAX_QUEUED) queue.splice(0, queue.length - MAX_QUEUED);
      if (queue.length && timer === undefined) {
        busy(); // the first tick's reading starts now (a pending tick's reading already runs)
        schedule();
      }
    },
  };
}

/** Whether the event loop was at least {@link BUSY_UTILIZATION} busy since the previous call. */
function eventLoopBusy(): () => boolean {
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  return () => {
    const current = performance.eventLoopUtilization();
    const since = performance.eventLoopUtilization(current, last);
    last = current;
    return since.utilization >= BUSY_UTILIZATION;
  };
}
