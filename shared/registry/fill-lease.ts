/**
 * The fill lease protocol of the blob miss path (the port is `FillLeases` in shared/store/ports.ts). One lease per
 * digest (key `blob:<digest>`, whatever the repository), so concurrent misses across requests, processes and
 * Lambda instances make one upstream download.
 *
 * - **Take.** A request that finds no live lease and then no committed blob (read in that order: a fill that
 *   commits later holds a live lease) takes the lease with one conditional write (`acquireLease` with
 *   `staleLeaseSeconds`) and starts the fill: in this process, or by dispatching the fill function (AWS,
 *   {@link dispatchWithRetry}). A dispatch that fails is retried with backoff; if it still fails, the lease is
 *   released at once and the client gets a retryable 503, never a 500 and never a lease left behind for
 *   `leaseSeconds`.
 * - **Heartbeat.** The process running the fill (the local server, or the fill function), never a waiter, writes
 *   `heartbeatLease` every `staleLeaseSeconds / 4` while the fill makes progress ({@link startFillWatchdog}): the
 *   upstream has not answered yet (bounded by the rule's upstream timeout), bytes arrived since the last heartbeat,
 *   or the verified bytes are being committed. A fill function's first act is a heartbeat, so a fill dispatched for
 *   a lease that was meanwhile taken over does not start at all.
 * - **Stale.** A lease whose heartbeat is older than `staleLeaseSeconds` belongs to a fill that crashed, was killed
 *   (kill -9 of the local server mid-fill), never started (a fill function that failed before its first line, an
 *   Invoke lost in a queue) or stalled. The next request takes it over; the take is a conditional write, so of
 *   several requests exactly one wins. A filler whose heartbeat finds it was taken over abandons its fill. A dead
 *   fill therefore costs seconds, not `leaseSeconds`.
 * - **Wait.** A request whose digest is being filled elsewhere reads the lease ({@link waitForFillElsewhere}),
 *   sleeping 0.25 s, then ×1.5 each time, at most 2 s apart. While the lease is live it only reads; once the lease
 *   is gone it reads the blob (committed: done), and only when the lease is gone, expired or stale does it try to
 *   take it. A healthy fill's waiters make about one read per waited second and no failing writes. A lease's owner
 *   names the repository its fill is for ({@link newLeaseOwner}): a request for another name (or finding an owner
 *   that names none) gets its own upstream's proof before it waits (blob-confirm.ts), so its wait tells nothing.
 * - **Release.** The filler deletes its lease when its fill ends: committed, failed, or abandoned (past its
 *   deadline, below its minimum rate over the last minute: {@link fillDeadline}, {@link rateWindow}; or proved
 *   unable to commit by another name's proof by the bytes, blob-wait.ts).
 *   The expiry (`leaseSeconds`, pushed forward by each heartbeat) stays the last bound and the DynamoDB TTL.
 */
import { randomUUID } from 'node:crypto';
import pRetry from 'p-retry';
import type { Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { FillLease, Stores } from '../store/ports.js';
import type { FillJob, FillSettings, Log } from './deps.js';

/**
 * A new lease owner for a fill started for the cache-side `name`: `<uuid> <name>` (a name never holds a space), so
 * a request finding the lease held knows whom the fill is for without asking anyone ({@link nameOfLeaseOwner}).
 */
export const newLeaseOwner = (name: string) => `${randomUUID()} ${name}`;

/** The name a fill lease's owner was taken for (see {@link newLeaseOwner}); undefined for other owners (GC). */
export function nameOfLeaseOwner(owner: string | undefined): string | undefined {
  const at = owner?.indexOf(' ') ?? -1;
  return at > 0 ? owner!.slice(at + 1) : undefined;
}

/** Lease key of the fill of `digest`. */
export const fillLeaseKey = (digest: Digest) => `blob:${digest}`;

/** A waiter's first sleep (ms), growth factor, and longest sleep (ms): see "Wait" above. */
export const WAIT_BACKOFF = { firstMs: 250, factor: 1.5, maxMs: 2000 } as const;

/** Attempts at dispatching a fill (Lambda Invoke) before giving up: 3, after 0.25 s and 0.5 s. */
const DISPATCH_RETRY = { retries: 2, minTimeout: 250, factor: 2 } as const;

/** Milliseconds between a running fill's heartbeats: a quarter of the stale window (at least 10 ms). */
export const heartbeatIntervalMs = (settings: FillSettings) => Math.max(10, (settings.staleLeaseSeconds * 1000) / 4);

/** True when `lease` belongs to a fill that is alive at `now` (ms): unexpired, with a recent heartbeat. */
export function isLive(lease: FillLease | undefined, now: number, settings: FillSettings): lease is FillLease {
  return lease !== undefined && lease.expiresAt > now && lease.heartbeatAt > now - settings.staleLeaseSeconds * 1000;
}

/** Takes the lease of `digest` for `owner` when it is free, expired or stale (one conditional write). */
export function takeFillLease(stores: Stores, digest: Digest, owner: string, settings: FillSettings): Promise<boolean> {
  return stores.leases.acquireLease(fillLeaseKey(digest), owner, settings.leaseSeconds, settings.staleLeaseSeconds);
}

/**
 * What {@link waitForFillElsewhere} found. Sizes in bytes. `free` carries the lease that is no longer live
 * (expired or stale) when there is one, rather than none at all.
 */
export type ElsewhereOutcome = { kind: 'committed'; size: number } | { kind: 'free'; dead?: FillLease } | { kind: 'deadline' };

/**
 * Waits for a fill held by someone else (see "Wait" above) until the blob is committed, the lease is free to take
 * (gone without a commit, expired or stale), or `deadline` (wall-clock ms) passes. `inProcess` is checked before
 * each read: when it returns true (a fill of this digest started in this process meanwhile), the wait ends as
 * `free` so the caller joins that fill instead.
 */
export async function waitForFillElsewhere(
  stores: Stores,
  digest: Digest,
  deadline: number,
  settings: FillSettings,
  inProcess: () => boolean,
): Promise<ElsewhereOutcome> {
  // The caller has just read the lease (or taken it): sleep first.
  for (let i = 0, delay: number = WAIT_BACKOFF.firstMs; i < 10_000; i++, delay = Math.min(delay * WAIT_BACKOFF.factor, WAIT_BACKOFF.maxMs)) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) return { kind: 'deadline' };
    await new Promise((r) => setTimeout(r, Math.min(delay, remaining)));
    if (inProcess()) return { kind: 'free' };
    const lease = await stores.leases.getLease(fillLeaseKey(digest));
    if (isLive(lease, Date.now(), settings)) continue;
    const stored = await stores.blobs.stat(digest);
    if (stored) return { kind: 'committed', size: stored.size };
    return { kind: 'free', dead: lease };
  }
  return { kind: 'deadline' }; // unreachable while the clock moves; bounds the loop regardless
}

/**
 * Dispatches `job` (AWS: an async Invoke of the fill function) under the lease its owner just took (`leaseKey`,
 * default the digest's fill lease), retrying a failed dispatch with backoff ({@link DISPATCH_RETRY}). When every
 * attempt fails the lease is released and a retryable 503 `UNAVAILABLE` is thrown, so the next request takes the
 * lease at once.
 */
export async function dispatchWithRetry(
  dispatch: (job: FillJob) => Promise<void>,
  job: FillJob & { digest: Digest },
  stores: Stores,
  log: Log,
  leaseKey: string = fillLeaseKey(job.digest),
): Promise<void> {
  try {
    await pRetry(() => dispatch(job), {
      ...DISPATCH_RETRY,
      onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
        log.warn('fill dispatch failed', { event: 'fill-dispatch-failed', name: job.name, digest: job.digest, attempt: attemptNumber, retriesLeft, reason: error.message });
      },
    });
  } catch (err) {
    await stores.leases.releaseLease(leaseKey, job.leaseOwner).catch(() => undefined);
    throw new RegistryError('UNAVAILABLE', 'the blob fill could not be started; retry', { headers: { 'Retry-After': '1' }, cause: err });
  }
}

/** What a running fill reports to its watchdog. Bytes; `startedAt` in wall-clock ms. */
export interface FillProgress {
  /** `connecting`: waiting for the upstream's answer; `transferring`: bytes flowing; `committing`: verified, storing. */
  phase: 'connecting' | 'transferring' | 'committing';
  /** Bytes received so far. */
  bytes: number;
  /** The size the upstream announced, when it did. */
  size?: number;
  startedAt: number;
}

/**
 * The deadline of a fill (wall-clock ms): `deadlineGraceSeconds` + size / `minBytesPerSecond` after it started,
 * the size being the announced one, or the bytes received so far when there is none (the rate must then hold
 * throughout). The announced size is only the upstream's claim (6 GB announced and one byte every 30 s would get
 * about 25 h at the default rate), so a fill must also keep up the rate while it runs: {@link rateWindow}.
 */
export function fillDeadline(progress: FillProgress, settings: FillSettings): number {
  const bytes = progress.size ?? progress.bytes;
  return progress.startedAt + settings.deadlineGraceSeconds * 1000 + (bytes / settings.minBytesPerSecond) * 1000;
}

/** Seconds of the sliding window over which a transferring fill must receive `minBytesPerSecond` × this many bytes. */
export const RATE_WINDOW_SECONDS = 60;

/**
 * Share of `minBytesPerSecond` a fill must keep up over each window ({@link rateWindow}): half. The window is read at
 * watchdog ticks, and a tick delayed by a busy event loop runs before the socket data buffered meanwhile is read,
 * so a fill just above the rate would look short over a window that ends at such a tick (a review measured cuts at
 * 1.02× the rate after a 2.5 s stall); a trickle is still far below half.
 */
export const RATE_WINDOW_SHARE = 0.5;

/**
 * The minimum rate while a fill runs, over a sliding window: once a fill has been transferring for longer than
 * `deadlineGraceSeconds` + {@link RATE_WINDOW_SECONDS}, the bytes received over the last window must reach
 * {@link RATE_WINDOW_SHARE} × `minBytesPerSecond` × {@link RATE_WINDOW_SECONDS}, whatever size its upstream announced
 * (the overall deadline still holds it to the full rate on average). An upstream that
 * trickles (a byte now and then, under the client's stall timer) is so cut within about two minutes at the
 * defaults, not at its {@link fillDeadline}, and the next request takes the lease over. `check` is given the
 * fill's progress and the time (ms) at each watchdog tick (samples between ticks are not needed: the window starts
 * at the newest tick at least a window old) and returns the bytes of the last window when they fell short.
 */
export function rateWindow(settings: FillSettings): { check(progress: FillProgress, now: number): number | undefined } {
  const windowMs = RATE_WINDOW_SECONDS * 1000;
  let samples: Array<{ at: number; bytes: number }> = [];
  return {
    check(progress, now) {
      if (progress.phase !== 'transferring') {
        samples = [];
        return undefined;
      }
      samples.push({ at: now, bytes: progress.bytes });
      // Keep the newest sample at least a window old (the window's start) and everything after it.
      while (samples.length > 1 && samples[1]!.at <= now - windowMs) samples.shift();
      const start = samples[0]!;
      if (now - progress.startedAt < settings.deadlineGraceSeconds * 1000 + windowMs || start.at > now - windowMs) return undefined;
      const bytes = progress.bytes - start.bytes;
      return bytes < RATE_WINDOW_SHARE * settings.minBytesPerSecond * RATE_WINDOW_SECONDS ? bytes : undefined;
    },
  };
}

/**
 * Watches a fill running in this process, every {@link heartbeatIntervalMs}: writes the lease heartbeat (when
 * `owner` holds one) if the fill made progress since the last tick (see "Heartbeat" above), and calls `abandon`
 * with the reason when the fill passed its {@link fillDeadline} or fell below the minimum rate over the last
 * {@link rateWindow} while transferring, or its heartbeat found the lease taken over. A heartbeat that fails (store unreachable) is logged and tried again next tick. Returns `stop`.
 * `key`: the lease `owner` holds, when it is not the digest's fill lease (a proof's, blob-prove.ts).
 */
export function startFillWatchdog(opts: {
  stores: Stores;
  digest: Digest;
  key?: string;
  owner?: string;
  settings: FillSettings;
  progress: () => FillProgress;
  abandon: (reason: string) => void;
  log: Log;
}): () => void {
  const { stores, digest, owner, settings, progress, abandon, log } = opts;
  const key = opts.key ?? fillLeaseKey(digest);
  let lastBytes = -1;
  let beating = false;
  let stopped = false;
  const rate = rateWindow(settings);
  const tick = () => {
    const p = progress();
    const now = Date.now();
    if (p.phase === 'transferring' && now > fillDeadline(p, settings)) {
      stop();
      return abandon(`the fill passed its deadline (${p.bytes} bytes in ${Math.round((now - p.startedAt) / 1000)} s, under ${settings.minBytesPerSecond} bytes/s)`);
    }
    const lastWindow = rate.check(p, now);
    if (lastWindow !== undefined) {
      stop();
      return abandon(`the fill fell below its minimum rate (${lastWindow} bytes in the last ${RATE_WINDOW_SECONDS} s, under ${settings.minBytesPerSecond} bytes/s)`);
    }
    const moved = p.phase !== 'transferring' || p.bytes !== lastBytes;
    lastBytes = p.bytes;
    if (!owner || !moved || beating) return;
    beating = true;
    stores.leases.heartbeatLease(key, owner, settings.leaseSeconds).then(
      (held) => {
        beating = false;
        if (!held && !stopped) {
          stop();
          abandon('its fill lease was taken over (no heartbeat for longer than staleLeaseSeconds)');
        }
      },
      (err: unknown) => {
        beating = false;
        log.warn('fill heartbeat failed', { digest, reason: (err as Error).message });
      },
    );
  };
  const timer = setInterval(tick, heartbeatIntervalMs(settings));
  timer.unref();
  function stop() {
    stopped = true;
    clearInterval(timer);
  }
  return stop;
}
