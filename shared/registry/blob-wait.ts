/**
 * Waiting for a blob fill (the miss path of blobs.ts under the lease protocol of fill-lease.ts): join a fill running
 * in this process, or take the lease and start one (here, or through `dispatchFill` on AWS), or wait for a fill held
 * elsewhere (reads with backoff), until the blob streams or is committed, or a deadline passes. A fill for another
 * name proves nothing for this one (blob-confirm.ts): a request finding one (here, or elsewhere: the lease owner
 * names its name) gets its own proof before it waits on it. {@link FillWaiter.startFill}
 * starts a fill without waiting for it (`missMode: redirect`, and the other blobs of an image being pulled).
 */
import type { Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { FillLease } from '../store/ports.js';
import type { Confirmations, Confirmed } from './blob-confirm.js';
import type { Filler, RunningFill } from './blob-fill.js';
import type { RegistryDeps } from './deps.js';
import { dispatchWithRetry, fillLeaseKey, isLive, nameOfLeaseOwner, newLeaseOwner, takeFillLease, waitForFillElsewhere } from './fill-lease.js';
import type { ResolvedName } from './rules.js';

/** Fills (AWS fill function) one request dispatches at most: the first and one more after it failed. */
const MAX_DISPATCHES = 2;

/** What waiting for a fill gave: streaming (a fill here started writing) or committed. Bytes. */
export type Filled = { streaming: true; size?: number; proof: Confirmed } | { streaming: false; size: number; proof?: Confirmed };

/** Waiting for fills, and starting them. */
export interface FillWaiter {
  /**
   * Waits until the blob is stored (or, `untilStreaming`, a fill here started writing) or `deadline` (wall-clock
   * ms) passes, taking the lease and starting a fill when nobody holds a live one. Undefined at the deadline.
   * `proof`: this name's upstream confirmed the digest already (HEAD).
   * @throws RegistryError `UNAVAILABLE` when fills keep failing or cannot be dispatched; the fill's own error when
   *   a fill for this very name failed; ProofPending (blob-prove.ts) when a fill for another name was found and this
   *   name's proof by the bytes did not end by the deadline.
   */
  awaitFill(resolved: ResolvedName, digest: Digest, deadline: number, untilStreaming: boolean, proof?: Confirmed): Promise<Filled | undefined>;
  /**
   * Starts a fill of `digest` for `resolved` in the background, unless one runs (here or elsewhere: a live lease) or
   * the blob is stored; never waits for it. What it found: `started`, `running` or `stored`.
   * @throws RegistryError `UNAVAILABLE` when the fill function could not be dispatched (the lease is released).
   */
  startFill(resolved: ResolvedName, digest: Digest): Promise<'started' | 'running' | 'stored'>;
}

/** Creates the waiter over the service's filler and confirmations. */
export function createFillWaiter(deps: RegistryDeps, filler: Filler, confirmations: Confirmations): FillWaiter {
  const { stores, log } = deps;
  const { ask, beforeWaiting, byOwnFill } = confirmations;

  /**
   * Waits for a fill running in this process until it streams (`untilStreaming`) or commits, or `deadline`.
   * A fill for another name proves nothing for this one: the proof comes first (blob-confirm.ts: a HEAD matching
   * the size that fill announced, else this name's own upstream's bytes), and when that fill fails this request
   * goes on (`again`) instead of inheriting another upstream's verdict. The size this name's proof hashed holds
   * that fill to it (`RunningFill.holdTo`): announcing another size, or sending more, it can never commit (the
   * digest fixes the bytes) and is abandoned (its lease released), now or when it does, and this request goes on
   * (`again`) to fill the digest itself, rather than wait for another upstream's lie to run into its limits.
   */
  async function join(resolved: ResolvedName, digest: Digest, running: RunningFill, deadline: number, untilStreaming: boolean, proof?: Confirmed): Promise<Filled | 'again' | undefined> {
    const sameName = running.name === resolved.name;
    // Until a proof's size holds that fill, this one's must (the link tells none); once held, the link will do.
    if (!proof && !sameName) proof = await beforeWaiting(resolved, digest, running.announcedSize, deadline, { sized: running.heldTo === undefined });
    if (!sameName && proof?.size !== undefined && running.holdTo(proof.size, resolved.name)) {
      await running.done.catch(() => undefined); // the lease is released when it settles
      return 'again';
    }
    const fill = (untilStreaming ? running.streaming : running.done).then(
      (size) => ({ size }),
      (err: unknown) => {
        if (sameName) throw err;
        return 'failed' as const;
      },
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), Math.max(0, deadline - Date.now()))));
    try {
      const outcome = await Promise.race([fill, timeout]);
      const p = proof ?? byOwnFill(resolved, digest);
      if (outcome === 'failed') return 'again';
      if (untilStreaming && outcome !== 'timeout') return { streaming: true, size: outcome.size, proof: p };
      // A committed fill for this very name has linked it.
      if (outcome !== 'timeout') return { streaming: false, size: outcome.size as number, proof: sameName && !proof ? byOwnFill(resolved, digest, true) : p };
      const stored = await stores.blobs.stat(digest);
      return stored ? { streaming: false, size: stored.size, proof: p } : undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Waits until the blob is stored (or, `untilStreaming`, a fill here started writing) or `deadline` (wall-clock
   * ms) passes, taking the lease and starting a fill when nobody holds a live one (fill-lease.ts). Undefined at
   * the deadline. `proof`: this name's upstream confirmed the digest already (HEAD).
   */
  async function awaitFill(resolved: ResolvedName, digest: Digest, deadline: number, untilStreaming: boolean, proof?: Confirmed): Promise<Filled | undefined> {
    let free: boolean | undefined;
    let dead: FillLease | undefined; // the lease found expired or stale, when there was one
    let dispatches = 0; // fills this request dispatched (AWS); each one found free again ended without a commit
    let holder: string | undefined; // the name whose fill holds the lease, when known
    for (let round = 0; round < 50; round++) {
      const running = filler.running(digest);
      if (running) {
        const joined = await join(resolved, digest, running, deadline, untilStreaming, proof);
        if (joined !== 'again') return joined;
        free = undefined;
        continue;
      }
      if (free === undefined) {
        const lease = await stores.leases.getLease(fillLeaseKey(digest));
        free = !isLive(lease, Date.now(), deps.fill);
        dead = lease;
        holder = free ? undefined : nameOfLeaseOwner(lease?.owner);
        // A fill may have committed and released its lease since the caller's miss: read the blob after the lease
        // (a fill committing later must hold a live lease, so the take below would fail).
        const stored = free ? await stores.blobs.stat(digest) : undefined;
        if (stored) return { streaming: false, size: stored.size, proof };
      }
      if (free) {
        // Our own fill function ended without a commit: is the blob there at all (404 → BLOB_UNKNOWN now)? One
        // more fill, and after that the fill function's log has the reason, not another upstream download.
        if (dispatches === 1 && !proof) await ask(resolved, digest);
        if (dispatches >= MAX_DISPATCHES) throw new RegistryError('UNAVAILABLE', 'the blob could not be fetched from the upstream; retry later', { headers: { 'Retry-After': '10' } });
        const started = await takeAndStart(resolved, digest, dead);
        if (started && started !== 'dispatched') return nullIfAgain(await join(resolved, digest, started, deadline, untilStreaming, proof));
        if (started) {
          holder = resolved.name;
          dispatches++;
        } else {
          // Taken by someone else meanwhile: for which name?
          holder = nameOfLeaseOwner((await stores.leases.getLease(fillLeaseKey(digest)))?.owner);
        }
      }
      // A fill elsewhere for another name (or one whose name is not known): the proof first, as in `join`.
      if (!proof && holder !== resolved.name) proof = await beforeWaiting(resolved, digest, undefined, deadline);
      const outcome = await waitForFillElsewhere(stores, digest, deadline, deps.fill, () => filler.running(digest) !== undefined);
      if (outcome.kind === 'committed') return { streaming: false, size: outcome.size, proof };
      if (outcome.kind === 'deadline') return undefined;
      free = true;
      dead = outcome.dead;
    }
    return undefined;
  }
  const nullIfAgain = (joined: Filled | 'again' | undefined) => (joined === 'again' ? undefined : joined);

  /** Takes the lease (when free, expired or stale) and starts the fill, here or by dispatch; undefined when taken. */
  async function takeAndStart(resolved: ResolvedName, digest: Digest, dead?: FillLease): Promise<RunningFill | 'dispatched' | undefined> {
    const owner = newLeaseOwner(resolved.name);
    if (!(await takeFillLease(stores, digest, owner, deps.fill))) return undefined;
    if (dead) log.info('blob fill lease taken over', { event: 'lease-takeover', name: resolved.name, digest, heartbeatAgoMs: Date.now() - dead.heartbeatAt });
    if (!deps.dispatchFill) return filler.start(resolved, digest, owner);
    await dispatchWithRetry(deps.dispatchFill, { name: resolved.name, digest, leaseOwner: owner }, stores, log);
    return 'dispatched';
  }

  async function startFill(resolved: ResolvedName, digest: Digest): Promise<'started' | 'running' | 'stored'> {
    if (filler.running(digest)) return 'running';
    const lease = await stores.leases.getLease(fillLeaseKey(digest));
    if (isLive(lease, Date.now(), deps.fill)) return 'running';
    if (await stores.blobs.stat(digest)) return 'stored';
    return (await takeAndStart(resolved, digest, lease)) ? 'started' : 'running';
  }

  return { awaitFill, startFill };
}
