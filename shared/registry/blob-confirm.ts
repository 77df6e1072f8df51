/**
 * One name, one upstream (DESIGN.md). Blob bytes are stored once per digest and shared by every repository, yet a
 * blob is served under a name only when that name's own upstream confirmed the digest — a HEAD or GET of the blob
 * in that name's upstream repository answered 2xx — or the digest is linked to the name (an earlier confirmation:
 * a fill for the name, or a HEAD). A manifest of the name referencing the digest is no confirmation: the manifest's
 * upstream vouches for its bytes, not for having the blobs it names, and a manifest naming the digest of another
 * rule's private blob must not make that blob servable (ports.ts, `BlobLinks`). So a committed blob first served
 * under a name that did not fill it costs one HEAD to that name's upstream, then it is linked. A blob's location (a signed URL that serves the digest to
 * whoever holds it, locally and on S3 alike) is made only from a {@link Confirmed}, and only this module makes one:
 * from a link, from the name's upstream answering a HEAD, or for a fill started for the same name (its upstream
 * GET answered 2xx before any byte was stored or served).
 */
import type { Digest } from '../oci/digest.js';
import type { BlobLocation } from '../store/ports.js';
import type { RegistryDeps } from './deps.js';
import type { ResolvedName } from './rules.js';

declare const confirmed: unique symbol;

/**
 * Proof that `name` may be served `digest`; `linked` when the link is known to exist. Branded: code outside this
 * module cannot make one without a cast.
 */
export interface Confirmed {
  readonly name: string;
  readonly digest: Digest;
  readonly linked: boolean;
  readonly [confirmed]: true;
}

const proof = (resolved: ResolvedName, digest: Digest, linked: boolean) => ({ name: resolved.name, digest, linked }) as Confirmed;

/** The ways to a {@link Confirmed}, and the one way from it to a location. */
export interface Confirmations {
  /**
   * Proof for a name whose own upstream GET of the digest answered 2xx (a fill for this very name); `linked` when
   * that fill has committed, and so linked it.
   */
  byOwnFill(resolved: ResolvedName, digest: Digest, linked?: boolean): Confirmed;
  /**
   * Asks the name's own upstream (HEAD) unless the digest is linked to the name (`skipLink`: ask regardless, e.g.
   * for the size). Returns the proof and the size the HEAD gave (bytes), if any.
   * @throws UpstreamError from the upstream (404 → the caller's BLOB_UNKNOWN).
   */
  confirmByUpstream(resolved: ResolvedName, digest: Digest, opts?: { skipLink?: boolean }): Promise<{ proof: Confirmed; size?: number }>;
  /** For a committed blob: the proof (asking the upstream when none is given), with the link written if missing. */
  linkConfirmed(resolved: ResolvedName, digest: Digest, proof?: Confirmed): Promise<Confirmed>;
  /** Where the client fetches the blob: only with a proof for the name. */
  locationOf(proof: Confirmed): Promise<BlobLocation>;
}

/** Creates the confirmations over the registry's stores and upstreams. */
export function createConfirmations(deps: RegistryDeps): Confirmations {
  const { stores } = deps;
  const confirmations: Confirmations = {
    byOwnFill: (resolved, digest, linked = false) => proof(resolved, digest, linked),
    async confirmByUpstream(resolved, digest, opts = {}) {
      if (!opts.skipLink && (await stores.links.isLinked(resolved.name, digest))) return { proof: proof(resolved, digest, true) };
      const head = await deps.upstreamFor(resolved.rule).headBlob(resolved.upstreamRepository, digest);
      const size = head.size !== undefined && Number.isSafeInteger(head.size) ? head.size : undefined;
      return { proof: proof(resolved, digest, false), size };
    },
    async linkConfirmed(resolved, digest, given) {
      const p = given ?? (await confirmations.confirmByUpstream(resolved, digest)).proof;
      if (!p.linked) await stores.links.link(resolved.name, digest);
      return proof(resolved, digest, true);
    },
    locationOf: (p) => stores.blobs.locate(p.digest),
  };
  return confirmations;
}
