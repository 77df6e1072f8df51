/**
 * The upstream client's contract: {@link UpstreamClient}, the operations the cache needs from an upstream
 * registry for one rule, and the values they return (a manifest HEAD's headers, a fetched manifest's bytes, a
 * blob body being streamed). `client.ts` implements it over fetch and undici and re-exports these types.
 */
import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.js';

/** What a manifest HEAD told us. Any field may be missing (some registries omit `Docker-Content-Digest`). */
export interface ManifestHead {
  digest?: string;
  mediaType?: string;
  size?: number;
}

/** A fetched manifest: the raw bytes and the headers that classify it. */
export interface FetchedManifest {
  body: Buffer;
  contentType?: string;
  digestHeader?: string;
}

/** A blob body being streamed from the upstream. `size` is the upstream `Content-Length` when given. */
export interface FetchedBlob {
  stream: Readable;
  size?: number;
}

/**
 * The operations the cache needs from an upstream registry. Each follows upstream redirects within the rule's
 * limits (shared/upstream/exchange.ts) and throws `UpstreamError` for every failure.
 */
export interface UpstreamClient {
  /** `timeoutMs` overrides the rule's upstream timeout (short on pull-time revalidation). */
  headManifest(repository: string, reference: string, opts?: { timeoutMs?: number }): Promise<ManifestHead>;
  /** Throws `UpstreamError('too-large')` for a manifest over `maxBytes` (by `Content-Length` or as it arrives). */
  getManifest(repository: string, reference: string, maxBytes: number): Promise<FetchedManifest>;
  /**
   * What the upstream says about a blob without sending it: `Content-Length` (bytes) and `Docker-Content-Digest`
   * when it sent them; both absent when it redirected elsewhere (a CDN). Throws like every operation.
   */
  headBlob(repository: string, digest: Digest): Promise<{ size?: number; digest?: string }>;
  getBlob(repository: string, digest: Digest): Promise<FetchedBlob>;
  /**
   * The upstream's own redirect target for a blob (e.g. a CDN URL that carries its own authorisation), or
   * undefined when the upstream serves the bytes itself. Redirects to another registry's blob URL are followed
   * first. Only https targets (or `insecureRedirectHosts`), never an internal IP literal or `localhost`.
   */
  blobRedirect(repository: string, digest: Digest): Promise<string | undefined>;
  listTags(repository: string, query: { n?: number; last?: string }): Promise<{ tags: string[]; next?: { n?: number; last: string } }>;
  /**
   * The upstream's referrers index for `digest` (OCI distribution spec, "Listing Referrers"), unfiltered, as
   * parsed JSON. A 404 (no referrers API) throws `UpstreamError('not-found')`.
   */
  getReferrers(repository: string, digest: Digest, maxBytes: number): Promise<{ manifests: unknown[] }>;
}
