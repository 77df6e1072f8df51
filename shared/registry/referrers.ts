/**
 * The referrers API through the cache (OCI distribution spec, "Listing Referrers"): the upstream's index,
 * kept for offline use (for subjects cached in that repository, when non-empty), filtered here by `artifactType` (so the filter works offline too, and
 * `OCI-Filters-Applied: artifactType` is always true when a filter was asked for). An upstream without the
 * referrers API answers 404, which is passed on so clients fall back to the `sha256-<hex>` tag schema.
 *
 * Entries of the upstream's index that are not descriptors (oci/descriptor.ts: `null`, a number, an object
 * without a valid digest or with an `artifactType` that is not a string) are **dropped**, not the whole answer
 * refused: the entries are independent artifacts (signatures, SBOMs), a client can do nothing with one that is
 * not a descriptor, and refusing the index would hide the valid ones (a signature a client's policy needs)
 * because of one broken entry. What is dropped is logged; only valid entries are served or kept.
 */
import { isDescriptor, type OciDescriptor } from '../oci/descriptor.js';
import { assertDigest } from '../oci/digest.js';
import { OCI_INDEX } from '../oci/media-types.js';
import { noteCache } from '../observe/request-scope.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';

/** A referrers answer: the index JSON body and whether a filter was applied. */
export interface ReferrersAnswer {
  body: string;
  filtered: boolean;
}

/**
 * The referrers of `digest` in `name`.
 * @throws RegistryError `DIGEST_INVALID`, `MANIFEST_UNKNOWN` (404: upstream has no referrers API),
 *   `UNAVAILABLE` when the upstream cannot answer and nothing was kept.
 */
export async function getReferrers(deps: RegistryDeps, name: string, rawDigest: string, artifactType?: string): Promise<ReferrersAnswer> {
  const resolved = deps.resolve(name);
  const digest = assertDigest(rawDigest);
  const key = `referrers/${digest}`;
  let manifests: OciDescriptor[];
  // From the upstream (`miss`), or the index kept for an outage (`stale`).
  noteCache('miss');
  try {
    const answer = await deps.upstreamFor(resolved.rule).getReferrers(resolved.upstreamRepository, digest, deps.maxManifestBytes);
    manifests = answer.manifests.filter(isDescriptor);
    const dropped = answer.manifests.length - manifests.length;
    if (dropped > 0) deps.log.warn('upstream referrers entries that are not descriptors were dropped', { name: resolved.name, digest, dropped });
    // Kept only for subjects this repository has cached, and only when there is something to keep: requests
    // for arbitrary digests must not grow the store.
    const body = JSON.stringify(manifests);
    if (manifests.length > 0 && (await deps.stores.manifests.getManifest(resolved.name, digest))) {
      if ((await deps.stores.listings.getListing(resolved.name, key))?.body !== body) await deps.stores.listings.putListing(resolved.name, key, body);
    }
  } catch (err) {
    const kept = err instanceof UpstreamError && err.failure !== 'not-found' ? await deps.stores.listings.getListing(resolved.name, key) : undefined;
    if (!kept) throw toRegistryError(err, 'MANIFEST_UNKNOWN');
    deps.log.warn('serving kept referrers', { name: resolved.name, digest, reason: (err as Error).message });
    noteCache('stale');
    manifests = (JSON.parse(kept.body) as unknown[]).filter(isDescriptor); // kept before entries were checked too
  }
  const filtered = artifactType !== undefined;
  const selected = filtered ? manifests.filter((m) => m.artifactType === artifactType) : manifests;
  return { body: JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: selected }), filtered };
}
