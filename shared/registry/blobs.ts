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
 * `fill.maxHops`, the rule's `missFallback`. A proof by the bytes (a blob stored for another name whose upstream's
 * HEAD proves nothing) has the same budget and the same answers past it (blob-prove.ts, `ProofPending`), while the
 * proof goes on. Concurrent misses of one digest wait on the same fill: one upstream
 * download in total. The lease protocol (take, heartbeat, stale takeover, waiting with backoff) is in
 * fill-lease.ts; waiting for a fill in blob-wait.ts; fills running in this process (deadline, storage exhaustion)
 * in blob-fill.ts.
 *
 * `missMode: redirect` (per rule): a GET miss asks the upstream for its own credential-free URL of the blob (a CDN
 * redirect, `UpstreamClient.blobRedirect`); when there is one, the fill starts in the background and the client
 * gets a 307 to that URL at once (no proof needed: the client fetches from the name's own upstream). Without one,
 * the miss waits as above. A layer GET that misses also starts fills of the next layers of the image manifest the
 * name just served (pull-hints.ts), so a client fetching layers one after another finds them arriving (not when the
 * miss got the upstream's redirect: that pull waits on no fill); where fills run in this process, those wait
 * until it has a spare moment (fill-ahead.ts).
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
import type { BlobLocation, ManifestRecord } from '../store/ports.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import { createConfirmations, type Confirmed } from './blob-confirm.js';
import { createFiller } from './blob-fill.js';
import { createProver, ProofPending } from './blob-prove.js';
import { createFillWaiter } from './blob-wait.js';
import type { RegistryDeps } from './deps.js';
import { createFillAhead } from './fill-ahead.js';
import { fillLeaseKey } from './fill-lease.js';
import { createNegativeCache } from './negative-cache.js';
import { createPullHints } from './pull-hints.js';
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
  /**
   * Runs one proof by the bytes (the fill function's `prove` job, blob-prove.ts): hashes the name's upstream copy of
   * the digest under `leaseOwner`'s proof lease and links it when it matches. `superseded`: the lease had been taken
   * over before it started.
   * @throws RegistryError 502 `DIGEST_INVALID` for other bytes (nothing linked); UpstreamError from the upstream.
   */
  prove(name: string, digest: string, leaseOwner: string): Promise<'linked' | 'superseded'>;
  /** A client GOT this manifest: a miss of one of its blobs starts fills of the others (pull-hints.ts). */
  noteManifest(record: ManifestRecord): void;
}

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
  const prover = createProver(deps);
  const confirmations = createConfirmations(deps, prover);
  const { ask, byOwnFill, linkConfirmed, locationOf } = confirmations;
  const { awaitFill, startFill } = createFillWaiter(deps, filler, confirmations);
  const hints = createPullHints(() => deps.now());
  const { fillAhead, asked } = createFillAhead({ hints, startFill, log, inProcess: !deps.dispatchFill, running: filler.count });

  /**
   * `missMode: redirect`: the upstream's own credential-free URL of the blob (a CDN), with a fill of it started in
   * the background; undefined when the upstream serves the blob itself (then the request waits, as `wait`).
   */
  async function redirectMiss(resolved: ResolvedName, digest: Digest): Promise<string | undefined> {
    const target = await deps.upstreamFor(resolved.rule).blobRedirect(resolved.upstreamRepository, digest);
    if (!target) return undefined;
    const fill = await startFill(resolved, digest).catch((err: unknown) => `not started: ${(err as Error).message}`);
    log.info('blob miss answered with the upstream\'s redirect', { event: 'miss-redirect', name: resolved.name, digest, fill });
    return target;
  }

  /**
   * A blob GET that could not be answered within `blobFill.waitSeconds` (a fill, or this name's proof by the bytes,
   * goes on): 307 back to itself (the next hop) up to `blobFill.maxHops`, then the rule's `missFallback`: the
   * upstream's own credential-free redirect when it gives one, else 503 `UNAVAILABLE` with `Retry-After: 30` (s).
   */
  async function couldNotWait(resolved: ResolvedName, digest: Digest, hop: number): Promise<BlobAnswer> {
    if (hop < deps.fill.maxHops) return { kind: 'retry', digest, hop: hop + 1 };
    if (resolved.rule.missFallback === 'upstream-redirect') {
      const target = await deps.upstreamFor(resolved.rule).blobRedirect(resolved.upstreamRepository, digest);
      if (target) return { kind: 'upstream', digest, location: target };
    }
    throw new RegistryError('UNAVAILABLE', 'blob is still being fetched from the upstream; retry later', { headers: { 'Retry-After': '30' } });
  }

  /**
   * The proof for a committed blob of `size` bytes (by `deadline`, wall-clock ms). A fill of it for this very name
   * still running here (filled ahead: committed, its link and lease release to come) is the proof once it ends, ms
   * later: asking before it linked would cost an upstream HEAD (or a download) for bytes this process has just
   * fetched for the name, and answering first would leave the fill's work (what it remembers,
   * shared/store/remembering-stores.ts) running after the pull.
   */
  async function storedProof(resolved: ResolvedName, digest: Digest, size: number, deadline: number): Promise<Confirmed> {
    const running = filler.running(digest);
    if (running?.name === resolved.name && (await running.done.then(() => true, () => false))) return byOwnFill(resolved, digest, true);
    return linkConfirmed(resolved, digest, size, { deadline });
  }

  /**
   * Resolves and admits the request; a stored blob comes with its proof for the name (by `deadline`, wall-clock ms).
   * `proveStored: false` (HEAD): a blob stored but not linked to the name is not proved here but returned as
   * `unlinkedSize` (bytes) past the same checks as a miss, so the caller can answer it as this name's miss.
   */
  async function prepare(
    name: string, rawDigest: string, deadline: number, opts: { proveStored: boolean },
  ): Promise<{ resolved: ResolvedName; digest: Digest; stored?: { size: number; proof: Confirmed }; unlinkedSize?: number }> {
    const resolved = deps.resolve(name);
    const digest = assertDigest(rawDigest);
    asked(resolved.name, digest);
    await admitBlob(deps, resolved, digest);
    const stored = await stores.blobs.stat(digest);
    // HEAD: linked, or being filled here for this very name (its link to come: storedProof).
    const linked = stored !== undefined
      && (opts.proveStored || filler.running(digest)?.name === resolved.name || (await stores.links.isLinked(resolved.name, digest)));
    // A layer this pull had filled ahead is still the pull's miss (the hit ratio counts what came from upstream);
    // the mark goes with the first request for it, stored yet or not (else the next pull's hit would be a miss).
    const filledAhead = hints.takeStartedAhead(resolved.name, digest);
    noteCache(linked && !filledAhead ? 'hit' : 'miss');
    if (stored && linked) return { resolved, digest, stored: { size: stored.size, proof: await storedProof(resolved, digest, stored.size, deadline) } };
    // The blobs route serves blobs only, never a manifest's bytes.
    if (await stores.manifests.getManifest(resolved.name, digest)) throw new RegistryError('BLOB_UNKNOWN');
    if (knownMissing(resolved, digest)) throw new RegistryError('BLOB_UNKNOWN');
    return { resolved, digest, ...(stored ? { unlinkedSize: stored.size } : {}) };
  }

  return {
    async stat(name, rawDigest) {
      let resolved: ResolvedName | undefined;
      const deadline = Date.now() + deps.fill.waitSeconds * 1000;
      try {
        const prepared = await prepare(name, rawDigest, deadline, { proveStored: false });
        resolved = prepared.resolved;
        const { digest, stored, unlinkedSize } = prepared;
        if (stored) return { digest, size: stored.size };
        // A HEAD miss asks the upstream itself: its size answers the HEAD without a fill (nothing stored is
        // served, so the upstream's word is enough, unless it names another digest).
        const claim = await ask(resolved, digest);
        if (claim.size !== undefined && (claim.digest === undefined || claim.digest === digest)) {
          // A blob stored for another name only is answered exactly as this name's miss (the same claim rule), so
          // the answer does not tell whether another tenant pulled the digest; a claim proving it (digest and the
          // stored size) links it.
          if (unlinkedSize !== undefined && claim.digest === digest && claim.size === unlinkedSize) await linkConfirmed(resolved, digest, unlinkedSize, { deadline, claim });
          return { digest, size: claim.size };
        }
        // No size claimed (401/403, a redirect): a miss downloads (its fill); a stored blob is proved by those bytes.
        if (unlinkedSize !== undefined) {
          await linkConfirmed(resolved, digest, unlinkedSize, { deadline, claim });
          return { digest, size: unlinkedSize };
        }
        const filled = await awaitFill(resolved, digest, deadline, false);
        if (filled === undefined || filled.streaming) throw new RegistryError('UNAVAILABLE', 'blob is being fetched from the upstream; retry', { headers: { 'Retry-After': '10' } });
        await linkConfirmed(resolved, digest, filled.size, { deadline, proof: filled.proof, claim });
        return { digest, size: filled.size };
      } catch (err) {
        rememberMiss(resolved, rawDigest, err);
        throw toRegistryError(err, 'BLOB_UNKNOWN');
      }
    },

    async locate(name, rawDigest, hop = 0) {
      let resolved: ResolvedName | undefined;
      const deadline = Date.now() + deps.fill.waitSeconds * 1000;
      try {
        const prepared = await prepare(name, rawDigest, deadline, { proveStored: true });
        resolved = prepared.resolved;
        const { digest, stored } = prepared;
        if (stored) return { kind: 'blob', digest, size: stored.size, location: await locationOf(stored.proof) };
        // A miss answered with the upstream's CDN URL waits on no fill, so nothing is filled ahead of the pull's
        // GETs: each starts its own blob's fill (on AWS, four fills ahead beside the client's own download).
        if (resolved.rule.missMode === 'redirect') {
          const target = await redirectMiss(resolved, digest);
          if (target) return { kind: 'upstream', digest, location: target };
        }
        const ahead = fillAhead(resolved, digest); // dispatched (or queued) while this request waits; awaited before answering
        const filled = await awaitFill(resolved, digest, deadline, streamsHere()).finally(() => ahead);
        if (filled?.streaming) {
          // Served while the fill runs; the fill links the blob to its name when it commits.
          return { kind: 'blob', digest, size: filled.size, location: await locationOf(filled.proof), filling: true };
        }
        if (filled !== undefined) {
          const proof = await linkConfirmed(resolved, digest, filled.size, { deadline, proof: filled.proof });
          return { kind: 'blob', digest, size: filled.size, location: await locationOf(proof) };
        }
        return await couldNotWait(resolved, digest, hop);
      } catch (err) {
        // This name's proof by the bytes goes on (blob-prove.ts): answered as a miss whose fill goes on.
        // (Thrown only past the name's resolution and the digest's check, so neither throws here.)
        if (err instanceof ProofPending) return couldNotWait(deps.resolve(name), assertDigest(rawDigest), hop);
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

    prove: (name, rawDigest, leaseOwner) => prover.runJob(deps.resolve(name), assertDigest(rawDigest), leaseOwner),

    noteManifest: (record) => hints.noteManifest(record),
  };
}
