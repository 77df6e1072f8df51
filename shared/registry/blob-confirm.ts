/**
 * One name, one upstream (DESIGN.md): the trust model of serving stored blob bytes under a name.
 *
 * Blob bytes are stored once per digest and shared by every repository of every rule, yet a blob is served under a
 * name only with a {@link Confirmed} for that name, and only this module makes one. The ways to it:
 * - **linked**: the digest is linked to the name (an earlier confirmation; ports.ts `BlobLinks`);
 * - **own fill**: a fill started for this very name (its upstream's GET answered 2xx, and nothing is committed
 *   unless the bytes hash to the digest);
 * - **a HEAD that proves it**: the name's upstream answered a HEAD of the blob with `Docker-Content-Digest` equal
 *   to the digest *and* `Content-Length` equal to the size of the bytes at hand: the committed blob's, or the size
 *   the running fill's upstream announced (its store commits nothing of another size). A 2xx alone proves nothing:
 *   a catch-all upstream (a web server or proxy answering 200 to every path) would otherwise confirm every digest,
 *   and so hand its rule's clients another rule's private blob by digest. A HEAD is compared only with a size known
 *   at that moment, so a request never waits on another name's fill before its own upstream proved the digest
 *   (how long it waited would tell that someone else is pulling that digest);
 * - **the bytes**: when the HEAD proves nothing — no or another `Docker-Content-Digest`, no or another size, a
 *   redirect (a CDN), or 401/403 (public.ecr.aws answers every blob HEAD 401 while its GET works) — the name's own
 *   upstream GET, hashed as it streams and thrown away ({@link Confirmations.byDownload}); the stored copy is then
 *   served, being those very bytes. The download is held to the committed blob's size, never to a size a running
 *   fill's upstream announced: that is another name's upstream's unverified claim (a hostile upstream announcing
 *   6 GB for a 64 KiB blob would otherwise turn every honest proof into 502 `DIGEST_INVALID`). A proof by the
 *   bytes that finds another size than that fill announced shows that fill can never commit: the waiter abandons
 *   it and fills the digest itself (blob-wait.ts). Cost: one download per name and digest (the link makes it once); concurrent
 *   requests share it. Wrong bytes are 502 `DIGEST_INVALID`, as the same request for a digest nobody stored gets.
 *   Bound: a request waits for it at most `blobFill.waitSeconds`, then answers as a miss that could not wait while
 *   the download goes on (in the background, or in the fill function on AWS): blob-prove.ts.
 * An upstream 404 (HEAD or GET) is `BLOB_UNKNOWN`. A client HEAD of a blob stored for another name only needs no
 * proof: it is answered as this name's miss (blobs.ts `stat`: the same claim rule), so its answer does not tell
 * whether another tenant pulled the digest. (A GET does: with stream-while-filling a miss answers a catch-all
 * upstream 307 and cuts the body, a stored blob 502 DIGEST_INVALID: a remaining difference, not closed yet.)
 *
 * What is trusted: a rule's upstream speaks for the rule's repositories. An upstream that knows a digest and its
 * size (it saw the manifest) can still claim the blob with a well-formed HEAD; the cache refuses only to let a
 * careless or catch-all answer stand for knowledge of the bytes. A manifest of the name referencing the digest is
 * no confirmation: the manifest's upstream vouches for its bytes, not for having the blobs it names, and a manifest
 * naming another rule's private blob must not make that blob servable (ports.ts, `BlobLinks`). A blob's location
 * (a signed URL that serves the digest to whoever holds it, locally and on S3 alike) is made only from a proof.
 */
import type { Digest } from '../oci/digest.js';
import type { BlobLocation } from '../store/ports.js';
import { UpstreamError } from '../upstream/errors.js';
import type { Prover } from './blob-prove.js';
import type { RegistryDeps } from './deps.js';
import type { ResolvedName } from './rules.js';

declare const confirmed: unique symbol;

/**
 * Proof that `name` may be served `digest`; `linked` when the link is known to exist; `size`: the blob's size
 * (bytes) when this proof hashed the bytes themselves in this process. Branded: code outside this module cannot
 * make one without a cast.
 */
export interface Confirmed {
  readonly name: string;
  readonly digest: Digest;
  readonly linked: boolean;
  readonly size?: number;
  readonly [confirmed]: true;
}

/** What a name's upstream said of a digest when asked with a HEAD: its `Docker-Content-Digest`, its size (bytes). */
export interface UpstreamClaim {
  digest?: string;
  size?: number;
}

const proof = (resolved: ResolvedName, digest: Digest, linked: boolean, size?: number) => ({ name: resolved.name, digest, linked, size }) as Confirmed;

/** The ways to a {@link Confirmed}, and the one way from it to a location. */
export interface Confirmations {
  /**
   * Proof for a name whose own upstream GET of the digest answered 2xx (a fill for this very name); `linked` when
   * that fill has committed, and so linked it.
   */
  byOwnFill(resolved: ResolvedName, digest: Digest, linked?: boolean): Confirmed;
  /**
   * Asks the name's own upstream (HEAD) what it has under the digest. A 401/403 proves nothing either way (some
   * registries refuse every blob HEAD): an empty claim, the GET decides.
   * @throws UpstreamError from the upstream (404 → the caller's BLOB_UNKNOWN; 429; 5xx).
   */
  ask(resolved: ResolvedName, digest: Digest): Promise<UpstreamClaim>;
  /** Proof when `claim` names `digest` and `size` (bytes; undefined: not known, so no proof). */
  byClaim(resolved: ResolvedName, digest: Digest, claim: UpstreamClaim, size: number | undefined): Confirmed | undefined;
  /**
   * Proof by the bytes: GETs the blob from the name's own upstream and hashes it as it streams, storing nothing
   * (stopped past `size` bytes when given), and links it. One download for concurrent callers of one name and
   * digest, waited for until `deadline` (wall-clock ms; blob-prove.ts).
   * @throws ProofPending past the deadline (the download goes on); RegistryError 502 `DIGEST_INVALID` when the
   *   bytes do not hash to the digest; UpstreamError.
   */
  byDownload(resolved: ResolvedName, digest: Digest, size: number | undefined, deadline: number): Promise<Confirmed>;
  /**
   * Proof for a name about to wait on a fill started for another name (`announced`: what that fill's upstream
   * announced, if known yet): the link, a HEAD that proves it (its size being `announced`), else the bytes by
   * `deadline`, held to no size (`announced` is another upstream's unverified claim; see the file header).
   * `opts.sized`: the fill runs in this process and the proof's size will hold it (blob-wait.ts `join`): the link
   * alone is not enough then (it tells no size), the HEAD or the bytes are asked. Throws as {@link ask} and
   * {@link byDownload}.
   */
  beforeWaiting(resolved: ResolvedName, digest: Digest, announced: number | undefined, deadline: number, opts?: { sized?: boolean }): Promise<Confirmed>;
  /**
   * For a committed blob of `size` bytes: the proof (the given one; the link; `claim` or a HEAD when it proves it;
   * else the bytes by `deadline`), with the link written if missing. Throws as {@link beforeWaiting}.
   */
  linkConfirmed(resolved: ResolvedName, digest: Digest, size: number, opts: { deadline: number; proof?: Confirmed; claim?: UpstreamClaim }): Promise<Confirmed>;
  /** Where the client fetches the blob: only with a proof for the name. */
  locationOf(proof: Confirmed): Promise<BlobLocation>;
}

/** Creates the confirmations over the registry's stores and upstreams; proofs by the bytes go to `prover`. */
export function createConfirmations(deps: RegistryDeps, prover: Prover): Confirmations {
  const { stores } = deps;

  const confirmations: Confirmations = {
    byOwnFill: (resolved, digest, linked = false) => proof(resolved, digest, linked),

    async ask(resolved, digest) {
      try {
        return await deps.upstreamFor(resolved.rule).headBlob(resolved.upstreamRepository, digest);
      } catch (err) {
        if (err instanceof UpstreamError && err.failure === 'denied') return {};
        throw err;
      }
    },

    byClaim: (resolved, digest, claim, size) =>
      size !== undefined && claim.digest === digest && claim.size === size ? proof(resolved, digest, false) : undefined,

    async byDownload(resolved, digest, size, deadline) {
      return proof(resolved, digest, true, await prover.prove(resolved, digest, size, deadline));
    },

    async beforeWaiting(resolved, digest, announced, deadline, opts = {}) {
      if (!opts.sized && (await stores.links.isLinked(resolved.name, digest))) return proof(resolved, digest, true);
      return confirmations.byClaim(resolved, digest, await confirmations.ask(resolved, digest), announced) ?? (await confirmations.byDownload(resolved, digest, undefined, deadline));
    },

    async linkConfirmed(resolved, digest, size, opts) {
      if (opts.proof?.linked) return opts.proof;
      if (!opts.proof && (await stores.links.isLinked(resolved.name, digest))) return proof(resolved, digest, true);
      if (!opts.proof) {
        const claim = opts.claim ?? (await confirmations.ask(resolved, digest));
        // The bytes' proof links the name itself.
        if (!confirmations.byClaim(resolved, digest, claim, size)) return confirmations.byDownload(resolved, digest, size, opts.deadline);
      }
      await stores.links.link(resolved.name, digest);
      return proof(resolved, digest, true);
    },

    locationOf: (p) => stores.blobs.locate(p.digest),
  };
  return confirmations;
}
