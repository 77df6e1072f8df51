/**
 * Proof by the bytes (blob-confirm.ts, "the bytes"), bounded like a miss. When a name's upstream HEAD proves
 * nothing, the name is served a blob stored (or being filled) for another name only after its own upstream's GET of
 * the digest hashed to it. That download may take longer than a request can wait (a multi-GB layer stored by a Docker
 * Hub rule, then pulled through a public.ecr.aws rule whose blob HEAD proves nothing; API Gateway ends a request at
 * ~30 s and Lambda freezes once it answered), so it gets the budget of a waiting miss, `blobFill.waitSeconds`:
 *
 * - **Past the budget** the request answers as a miss that could not wait (blobs.ts): {@link ProofPending} turns into
 *   a 307 back to itself (`?pt-hop=N`), past `blobFill.maxHops` into the rule's `missFallback` (the upstream's own
 *   credential-free redirect, whose bytes come from the name's own upstream: no leak; else 503 with `Retry-After`).
 * - **The proof makes progress across retries.** Here (no fill function) the download goes on in the background and
 *   a retry joins it (one download per name and digest in this process). On AWS it runs in the fill function (async
 *   Invoke, up to 15 min; functions/fill.ts, `mode: 'prove'`) under the proof's lease ({@link proveLeaseKey}: taken
 *   with the fill lease's protocol, heartbeated while bytes arrive, released at the end), so it runs once; the
 *   waiting request reads the link and the lease (backoff as fill-lease.ts, "Wait") until the link appears.
 * - **A proof ends in a link** (the name's upstream has those very bytes; ports.ts `BlobLinks`: a link may precede
 *   the commit of a fill for another name, and serving still needs the committed blob) or in nothing. A proof that
 *   ended on AWS without a link (wrong bytes, upstream failure) is run once more in the request, within its budget,
 *   so the client gets the verdict: 502 `DIGEST_INVALID` for wrong bytes, the upstream's error otherwise.
 * - **Bounded in the background too**: a proof download is abandoned past a fill's deadline
 *   (`deadlineGraceSeconds` + size / `minBytesPerSecond`, fill-lease.ts `fillDeadline`) or below the minimum rate
 *   over the last minute (fill-lease.ts `rateWindow`).
 */
import type { Readable } from 'node:stream';
import { hasherFor, parseDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { UpstreamError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import { dispatchWithRetry, isLive, newLeaseOwner, startFillWatchdog, WAIT_BACKOFF, type FillProgress } from './fill-lease.js';
import type { ResolvedName } from './rules.js';

/**
 * The proof by the bytes did not end within the request's budget and goes on. A miss that could not wait: blob GETs
 * turn it into a hop or the rule's fallback (blobs.ts); elsewhere it answers as it is, 503 `UNAVAILABLE` with
 * `Retry-After: 10` (seconds).
 */
export class ProofPending extends RegistryError {
  constructor() {
    super('UNAVAILABLE', "the blob is being checked against this repository's upstream; retry", { headers: { 'Retry-After': '10' } });
  }
}

/** Lease key of the proof of `digest` for the cache-side `name` (one proof per name and digest at a time). */
export const proveLeaseKey = (name: string, digest: Digest) => `prove:${digest}:${name}`;

/** Proofs by the bytes (see the file header). Sizes in bytes, deadlines in wall-clock ms. */
export interface Prover {
  /**
   * Proves `digest` for `resolved` by its upstream's bytes and links it, by `deadline`. `size`: the size of the
   * bytes at hand when known (the download stops past it; another size is no proof). Resolves with the size of
   * the bytes that hashed to the digest when they were hashed in this process; undefined when the proof ran in
   * the fill function.
   * @throws ProofPending past the deadline (the proof goes on); RegistryError 502 `DIGEST_INVALID` when the bytes
   *   do not hash to the digest; UpstreamError from the upstream (404 → the caller's BLOB_UNKNOWN).
   */
  prove(resolved: ResolvedName, digest: Digest, size: number | undefined, deadline: number): Promise<number | undefined>;
  /**
   * The fill function's `prove` job: under `leaseOwner`'s proof lease (heartbeated, released at the end), hashes
   * the name's upstream copy and links it when it matches. `superseded` when the lease had been taken over before
   * it started (nothing done). Throws as {@link prove}, never ProofPending.
   */
  runJob(resolved: ResolvedName, digest: Digest, leaseOwner: string): Promise<'linked' | 'superseded'>;
}

/** Creates the prover of one blob service. */
export function createProver(deps: RegistryDeps): Prover {
  const { stores, log } = deps;
  const downloads = new Map<string, Promise<number>>();

  /** Streams the name's upstream copy of `digest` through its hash (storing nothing); throws unless it matches. */
  async function hashUpstreamCopy(resolved: ResolvedName, digest: Digest, size?: number, lease?: { key: string; owner: string }): Promise<number> {
    const progress: FillProgress = { phase: 'connecting', bytes: 0, startedAt: Date.now(), size };
    let stream: Readable | undefined;
    let abandoned: string | undefined;
    const stopWatchdog = startFillWatchdog({
      stores, digest, key: lease?.key, owner: lease?.owner, settings: deps.fill, progress: () => progress, log,
      abandon: (reason) => {
        abandoned = reason;
        log.warn('blob proof abandoned', { event: 'proof-abandoned', name: resolved.name, digest, reason });
        stream?.destroy(new UpstreamError('unavailable', `blob proof abandoned: ${reason}`));
      },
    });
    const hash = hasherFor(digest);
    try {
      const blob = await deps.upstreamFor(resolved.rule).getBlob(resolved.upstreamRepository, digest);
      stream = blob.stream;
      if (abandoned) throw new UpstreamError('unavailable', `blob proof abandoned: ${abandoned}`);
      progress.phase = 'transferring';
      progress.size ??= blob.size;
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        progress.bytes += chunk.length;
        if (size !== undefined && progress.bytes > size) break; // longer than the blob: cannot be it
        hash.update(chunk);
      }
    } catch (err) {
      if (err instanceof UpstreamError) throw err;
      throw new UpstreamError('unavailable', `blob transfer failed: ${(err as Error).message}`);
    } finally {
      stopWatchdog();
      stream?.destroy();
    }
    if ((size !== undefined && progress.bytes !== size) || `${parseDigest(digest)!.algorithm}:${hash.digest('hex')}` !== digest) {
      throw new RegistryError('DIGEST_INVALID', 'upstream blob did not match its digest', { status: 502 });
    }
    return progress.bytes;
  }

  async function hashAndLink(resolved: ResolvedName, digest: Digest, size?: number, lease?: { key: string; owner: string }): Promise<number> {
    const started = Date.now();
    const bytes = await hashUpstreamCopy(resolved, digest, size, lease);
    await stores.links.link(resolved.name, digest);
    log.info('blob confirmed by its bytes', { event: 'confirm-by-download', name: resolved.name, digest, bytes, ms: Date.now() - started });
    return bytes;
  }

  /** The download in this process: started once per name and digest, joined by every caller until it ends. */
  function downloadHere(resolved: ResolvedName, digest: Digest, size?: number): Promise<number> {
    const key = `${resolved.name}\n${digest}`;
    let running = downloads.get(key);
    if (!running) {
      running = hashAndLink(resolved, digest, size).finally(() => downloads.delete(key));
      running.catch(() => undefined); // its requests may all have left (past their deadline): not unhandled
      downloads.set(key, running);
    }
    return running;
  }

  /** AWS: the proof in the fill function under its lease; waits for the link until `deadline` (see the header). */
  async function proveInFillFunction(resolved: ResolvedName, digest: Digest, size: number | undefined, deadline: number): Promise<number | undefined> {
    const key = proveLeaseKey(resolved.name, digest);
    let dispatched = false;
    for (let i = 0, delay: number = WAIT_BACKOFF.firstMs; i < 10_000; i++, delay = Math.min(delay * WAIT_BACKOFF.factor, WAIT_BACKOFF.maxMs)) {
      if (await stores.links.isLinked(resolved.name, digest)) return undefined;
      if (!isLive(await stores.leases.getLease(key), Date.now(), deps.fill)) {
        // The proof this request dispatched ended without a link: its verdict, here and within the budget.
        if (dispatched) return withinDeadline(downloadHere(resolved, digest, size), deadline);
        const owner = newLeaseOwner(resolved.name);
        if (await stores.leases.acquireLease(key, owner, deps.fill.leaseSeconds, deps.fill.staleLeaseSeconds)) {
          await dispatchWithRetry(deps.dispatchFill!, { name: resolved.name, digest, leaseOwner: owner, mode: 'prove' }, stores, log, key);
          dispatched = true;
        }
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      await new Promise((r) => setTimeout(r, Math.min(delay, remaining)));
    }
    throw new ProofPending();
  }

  return {
    prove: (resolved, digest, size, deadline) =>
      deps.dispatchFill ? proveInFillFunction(resolved, digest, size, deadline) : withinDeadline(downloadHere(resolved, digest, size), deadline),

    async runJob(resolved, digest, leaseOwner) {
      const key = proveLeaseKey(resolved.name, digest);
      // First act: a heartbeat. A lease taken over while this job was on its way means another proof runs.
      if (!(await stores.leases.heartbeatLease(key, leaseOwner, deps.fill.leaseSeconds))) {
        log.info('blob proof not started: its lease was taken over', { event: 'proof-superseded', name: resolved.name, digest });
        return 'superseded';
      }
      try {
        if (await stores.links.isLinked(resolved.name, digest)) return 'linked';
        await hashAndLink(resolved, digest, (await stores.blobs.stat(digest))?.size, { key, owner: leaseOwner });
        return 'linked';
      } catch (err) {
        log.warn('blob proof failed', { event: 'proof-failed', name: resolved.name, digest, reason: (err as Error).message });
        throw err;
      } finally {
        await stores.leases.releaseLease(key, leaseOwner).catch(() => undefined);
      }
    },
  };
}

/** `work`'s result, or {@link ProofPending} once `deadline` (wall-clock ms) passed first; `work` itself goes on. */
async function withinDeadline<T>(work: Promise<T>, deadline: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new ProofPending()), Math.max(0, deadline - Date.now()))));
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}
