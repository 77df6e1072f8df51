/**
 * Blobs through the cache.
 *
 * **One name, one upstream** (DESIGN.md): a blob is served under a name only when that name's own upstream
 * confirmed the digest, or it is linked to the name, on every path (committed, in flight here or elsewhere, on a
 * hop, HEAD, AWS). Locations are made only from a proof (blob-confirm.ts: a link, a fill for the name, a HEAD of
 * its upstream that names the digest and the size at hand, or its upstream's bytes). A request finding a fill
 * started for another name — running here, or elsewhere (the lease owner names the name it was taken for) — gets
 * its proof first and only then waits on that fill, so how long it waited tells nothing about another tenant's
 * pull; a request for the same name waits as before.
 *
 * The miss path works under API Gateway's ~30 s limit (DESIGN.md, "The miss path"): the request takes the
 * fill lease and starts the fill (in the background here, or through `dispatchFill` on AWS), then waits up to
 * `fill.waitSeconds`. Filled in time → 307 to the stored blob. Not yet → 307 back to the same URL with a hop
 * counter (`?pt-hop=N`, the URL built by the app), so the client comes back and waits again. Past
 * `fill.maxHops`, the rule's `missFallback`. Concurrent misses of one digest wait on the same fill: one upstream
 * download in total. The lease protocol (take, heartbeat, stale takeover, waiting with backoff) is in
 * fill-lease.ts; fills running in this process (deadline, storage exhaustion) in blob-fill.ts.
 *
 * Stream while filling (embedded backend, fill in this process, `stores.blobs.streamsWhileFilling`): a blob GET
 * does not wait for the commit. Its answer (307 to the store's location) goes out as soon as the upstream
 * answered the blob GET with 2xx and the store started writing, and the location serves the bytes while they
 * arrive (see fs-blob-store.ts for why that is safe: bytes verified before the client's body completes, a
 * mismatch cuts the connection, only verified bytes are committed). An upstream 404 still answers BLOB_UNKNOWN
 * at once, and a 401/5xx an error, since they come before any byte. HEAD (`stat`) still waits for the committed
 * size unless the upstream HEAD gave one. The fill links the blob to its name when it commits.
 */
import { assertDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { noteCache } from '../observe/request-scope.js';
import type { BlobLocation, FillLease } from '../store/ports.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import { createConfirmations, type Confirmed } from './blob-confirm.js';
import { createFiller, type RunningFill } from './blob-fill.js';
import type { RegistryDeps } from './deps.js';
import { dispatchWithRetry, fillLeaseKey, isLive, nameOfLeaseOwner, newLeaseOwner, takeFillLease, waitForFillElsewhere } from './fill-lease.js';
import { createNegativeCache } from './negative-cache.js';
import type { ResolvedName } from './rules.js';
import { admitBlob } from './signature-check.js';

/** Query parameter carrying the hop count of a blob request redirected back to itself. */
export const HOP_PARAM = 'pt-hop';

/**
 * What a blob GET answers: the blob's location, or "come back" (same URL, next hop). Sizes in bytes; `size` is
 * undefined only for a blob streamed while filling whose upstream sent no `Content-Length` (`filling` set).
 */
export type BlobAnswer =
  | { kind: 'blob'; digest: Digest; size?: number; location: BlobLocation; filling?: true }
  | { kind: 'retry'; digest: Digest; hop: number }
  | { kind: 'upstream'; digest: Digest; location: string };

/** Blob operations of the cache. */
export interface BlobService {
  /**
   * Size of the blob. A miss is answered from an upstream HEAD when it gives a size, else filled.
   * @throws RegistryError `DIGEST_INVALID` for a malformed digest, `BLOB_UNKNOWN` when neither the cache nor the
   *   upstream has it for this repository, `UNAVAILABLE`/`TOOMANYREQUESTS` when the upstream cannot answer.
   */
  stat(name: string, digest: string): Promise<{ digest: Digest; size: number }>;
  /** Answers a blob GET (`hop` = this request's hop count); fills on a miss. Throws as {@link stat}. */
  locate(name: string, digest: string, hop?: number): Promise<BlobAnswer>;
  /**
   * Runs one fill (the body of the fill function): upstream → verified store → link; heartbeats `leaseOwner`'s
   * lease while it runs and releases it at the end. Returns the size in bytes, or undefined when the fill did not
   * run because its lease had been taken over before it started (see fill-lease.ts, "Stale").
   */
  fill(name: string, digest: string, leaseOwner?: string): Promise<number | undefined>;
}

/** Fills (AWS fill function) one request dispatches at most: the first and one more after it failed. */
const MAX_DISPATCHES = 2;

/** What waiting for a fill gave: streaming (a fill here started writing) or committed. Bytes. */
type Filled = { streaming: true; size?: number; proof: Confirmed } | { streaming: false; size: number; proof?: Confirmed };

/** Creates the blob service. */
export function createBlobService(deps: RegistryDeps): BlobService {
  const { stores, log } = deps;
  const filler = createFiller(deps);
  // "The upstream has no such blob for this repository", remembered for the rule's negativeCacheSeconds.
  const missing = createNegativeCache(() => deps.now());
  const rememberMiss = (resolved: ResolvedName | undefined, digest: string, err: unknown) => {
    if (resolved && err instanceof UpstreamError && (err.failure === 'not-found' || err.failure === 'denied')) {
      missing.remember(`${resolved.name}\n${digest}`, resolved.rule.negativeCacheSeconds * 1000);
    }
  };
  const knownMissing = (resolved: ResolvedName, digest: Digest) => missing.has(`${resolved.name}\n${digest}`);
  const streamsHere = () => !deps.dispatchFill && stores.blobs.streamsWhileFilling === true;
  const { ask, beforeWaiting, linkConfirmed, byOwnFill, locationOf } = createConfirmations(deps);

  /**
   * Waits for a fill running in this process until it streams (`untilStreaming`) or commits, or `deadline`.
   * A fill for another name proves nothing for this one: the proof comes first (blob-confirm.ts, against the size
   * that fill announced), and when that fill fails this request goes on (`again`) instead of inheriting another
   * upstream's verdict.
   */
  async function join(resolved: ResolvedName, digest: Digest, running: RunningFill, deadline: number, untilStreaming: boolean, proof?: Confirmed): Promise<Filled | 'again' | undefined> {
    const sameName = running.name === resolved.name;
    if (!proof && !sameName) proof = await beforeWaiting(resolved, digest, running.announcedSize);
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
        const owner = newLeaseOwner(resolved.name);
        if (await takeFillLease(stores, digest, owner, deps.fill)) {
          holder = resolved.name;
          if (dead) log.info('blob fill lease taken over', { event: 'lease-takeover', name: resolved.name, digest, heartbeatAgoMs: Date.now() - dead.heartbeatAt });
          if (!deps.dispatchFill) return nullIfAgain(await join(resolved, digest, filler.start(resolved, digest, owner), deadline, untilStreaming, proof));
          await dispatchWithRetry(deps.dispatchFill, { name: resolved.name, digest, leaseOwner: owner }, stores, log);
          dispatches++;
        } else {
          // Taken by someone else meanwhile: for which name?
          holder = nameOfLeaseOwner((await stores.leases.getLease(fillLeaseKey(digest)))?.owner);
        }
      }
      // A fill elsewhere for another name (or one whose name is not known): the proof first, as in `join`.
      if (!proof && holder !== resolved.name) proof = await beforeWaiting(resolved, digest);
      const outcome = await waitForFillElsewhere(stores, digest, deadline, deps.fill, () => filler.running(digest) !== undefined);
      if (outcome.kind === 'committed') return { streaming: false, size: outcome.size, proof };
      if (outcome.kind === 'deadline') return undefined;
      free = true;
      dead = outcome.dead;
    }
    return undefined;
  }
  const nullIfAgain = (joined: Filled | 'again' | undefined) => (joined === 'again' ? undefined : joined);

  async function prepare(name: string, rawDigest: string): Promise<{ resolved: ResolvedName; digest: Digest; stored?: { size: number; proof: Confirmed } }> {
    const resolved = deps.resolve(name);
    const digest = assertDigest(rawDigest);
    await admitBlob(deps, resolved, digest);
    const stored = await stores.blobs.stat(digest);
    noteCache(stored ? 'hit' : 'miss');
    if (stored) return { resolved, digest, stored: { size: stored.size, proof: await linkConfirmed(resolved, digest, stored.size) } };
    // The blobs route serves blobs only, never a manifest's bytes.
    if (await stores.manifests.getManifest(resolved.name, digest)) throw new RegistryError('BLOB_UNKNOWN');
    if (knownMissing(resolved, digest)) throw new RegistryError('BLOB_UNKNOWN');
    return { resolved, digest };
  }

  return {
    async stat(name, rawDigest) {
      let resolved: ResolvedName | undefined;
      try {
        const prepared = await prepare(name, rawDigest);
        resolved = prepared.resolved;
        const { digest, stored } = prepared;
        if (stored) return { digest, size: stored.size };
        // A HEAD miss asks the upstream itself: its size answers the HEAD without a fill (nothing stored is
        // served, so the upstream's word is enough, unless it names another digest).
        const claim = await ask(resolved, digest);
        if (claim.size !== undefined && (claim.digest === undefined || claim.digest === digest)) return { digest, size: claim.size };
        const filled = await awaitFill(resolved, digest, Date.now() + deps.fill.waitSeconds * 1000, false);
        if (filled === undefined || filled.streaming) throw new RegistryError('UNAVAILABLE', 'blob is being fetched from the upstream; retry', { headers: { 'Retry-After': '10' } });
        await linkConfirmed(resolved, digest, filled.size, { proof: filled.proof, claim });
        return { digest, size: filled.size };
      } catch (err) {
        rememberMiss(resolved, rawDigest, err);
        throw toRegistryError(err, 'BLOB_UNKNOWN');
      }
    },

    async locate(name, rawDigest, hop = 0) {
      let resolved: ResolvedName | undefined;
      try {
        const prepared = await prepare(name, rawDigest);
        resolved = prepared.resolved;
        const { digest, stored } = prepared;
        if (stored) return { kind: 'blob', digest, size: stored.size, location: await locationOf(stored.proof) };
        const filled = await awaitFill(resolved, digest, Date.now() + deps.fill.waitSeconds * 1000, streamsHere());
        if (filled?.streaming) {
          // Served while the fill runs; the fill links the blob to its name when it commits.
          return { kind: 'blob', digest, size: filled.size, location: await locationOf(filled.proof), filling: true };
        }
        if (filled !== undefined) {
          const proof = await linkConfirmed(resolved, digest, filled.size, { proof: filled.proof });
          return { kind: 'blob', digest, size: filled.size, location: await locationOf(proof) };
        }
        if (hop < deps.fill.maxHops) {
          return { kind: 'retry', digest, hop: hop + 1 };
        }
        if (resolved.rule.missFallback === 'upstream-redirect') {
          const target = await deps.upstreamFor(resolved.rule).blobRedirect(resolved.upstreamRepository, digest);
          if (target) return { kind: 'upstream', digest, location: target };
        }
        throw new RegistryError('UNAVAILABLE', 'blob is still being fetched from the upstream; retry later', { headers: { 'Retry-After': '30' } });
      } catch (err) {
        rememberMiss(resolved, rawDigest, err);
        throw toRegistryError(err, 'BLOB_UNKNOWN');
      }
    },

    async fill(name, rawDigest, leaseOwner) {
      const resolved = deps.resolve(name);
      const digest = assertDigest(rawDigest);
      const key = fillLeaseKey(digest);
      // First act: a heartbeat. A lease taken over while this fill was on its way means another fill runs.
      if (leaseOwner && !(await stores.leases.heartbeatLease(key, leaseOwner, deps.fill.leaseSeconds))) {
        log.info('blob fill not started: its lease was taken over', { event: 'fill-superseded', name: resolved.name, digest });
        return undefined;
      }
      try {
        // Already stored (another name's fill): not linked here, since this name's upstream confirmed nothing;
        // the waiting request asks it.
        const stored = await stores.blobs.stat(digest);
        if (stored) return stored.size;
        return await filler.run(resolved, digest, leaseOwner);
      } finally {
        if (leaseOwner) await stores.leases.releaseLease(key, leaseOwner).catch(() => undefined);
      }
    },
  };
}
