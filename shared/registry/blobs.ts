/**
 * Blobs through the cache. A blob is served for a repository only when that repository references it (a link,
 * written when one of its manifests is stored, or after the upstream confirms it with a HEAD). A miss streams
 * the upstream blob into the blob store, which commits only verified bytes; concurrent misses of one digest
 * share one upstream download.
 */
import { assertDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { BlobLocation } from '../store/ports.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import type { ResolvedName } from './rules.js';
import { createSingleFlight } from './single-flight.js';

/** Blob operations of the cache. Sizes in bytes. */
export interface BlobService {
  /**
   * Size of the blob, filling the cache on a miss.
   * @throws RegistryError `DIGEST_INVALID` for a malformed digest, `BLOB_UNKNOWN` when neither the cache nor the
   *   upstream has it for this repository, `UNAVAILABLE`/`TOOMANYREQUESTS` when the upstream cannot answer.
   */
  stat(name: string, digest: string): Promise<{ digest: Digest; size: number }>;
  /** Like {@link stat}, plus where the client fetches the bytes. */
  locate(name: string, digest: string): Promise<{ digest: Digest; size: number; location: BlobLocation }>;
}

/** Creates the blob service. */
export function createBlobService(deps: RegistryDeps): BlobService {
  const { stores, log } = deps;
  const fills = createSingleFlight();

  async function fill(resolved: ResolvedName, digest: Digest): Promise<{ size: number; filledFor: string }> {
    const upstream = deps.upstreamFor(resolved.rule);
    const blob = await upstream.getBlob(resolved.upstreamRepository, digest);
    const started = deps.now();
    let size: number;
    try {
      ({ size } = await stores.blobs.write(digest, blob.stream, blob.size));
    } catch (err) {
      if (err instanceof RegistryError || err instanceof UpstreamError) throw err;
      // The body broke mid-transfer (connection reset, truncation): nothing was committed.
      log.warn('blob fill failed', { name: resolved.name, digest, reason: (err as Error).message });
      throw new UpstreamError('unavailable', `blob transfer failed: ${(err as Error).message}`);
    }
    await stores.links.link(resolved.name, digest);
    log.info('blob filled', { name: resolved.name, digest, size, ms: deps.now() - started });
    return { size, filledFor: resolved.name };
  }

  async function ensure(name: string, rawDigest: string): Promise<{ resolved: ResolvedName; digest: Digest; size: number }> {
    const resolved = deps.resolve(name);
    const digest = assertDigest(rawDigest);
    try {
      const stored = await stores.blobs.stat(digest);
      if (stored) {
        if (!(await stores.links.isLinked(resolved.name, digest))) {
          // Stored for another repository: link only once the upstream confirms this repository has it.
          await deps.upstreamFor(resolved.rule).headBlob(resolved.upstreamRepository, digest);
          await stores.links.link(resolved.name, digest);
        }
        return { resolved, digest, size: stored.size };
      }
      // The blobs route serves blobs only, never a manifest's bytes.
      if (await stores.manifests.getManifest(resolved.name, digest)) throw new RegistryError('BLOB_UNKNOWN');
      const result = await fills.run(digest, () => fill(resolved, digest));
      if (result.filledFor !== resolved.name && !(await stores.links.isLinked(resolved.name, digest))) {
        await deps.upstreamFor(resolved.rule).headBlob(resolved.upstreamRepository, digest);
        await stores.links.link(resolved.name, digest);
      }
      return { resolved, digest, size: result.size };
    } catch (err) {
      throw toRegistryError(err, 'BLOB_UNKNOWN');
    }
  }

  return {
    async stat(name, digest) {
      const { digest: d, size } = await ensure(name, digest);
      return { digest: d, size };
    },
    async locate(name, digest) {
      const { digest: d, size } = await ensure(name, digest);
      return { digest: d, size, location: await stores.blobs.locate(d) };
    },
  };
}
