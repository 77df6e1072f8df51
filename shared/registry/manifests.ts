/**
 * Manifests through the cache (distribution's proxy layering): digests local-first and immutable; tags
 * answered from the index while younger than the rule's TTL, re-checked with an upstream HEAD when older
 * (refetched only when the digest moved), and served stale when the upstream cannot answer.
 */
import { digestLike, isDigest, sha256Digest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { classifyManifest, referencedBlobs } from '../oci/media-types.js';
import { parseReference } from '../oci/reference.js';
import type { ManifestRecord } from '../store/ports.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import type { ResolvedName } from './rules.js';
import { createSingleFlight } from './single-flight.js';

/** Manifest operations of the cache. */
export interface ManifestService {
  /**
   * The manifest for `reference` (tag or digest) in `name`, fetching and storing it on a miss.
   * @throws RegistryError `NAME_INVALID`/`NAME_UNKNOWN`/`MANIFEST_INVALID`/`DIGEST_INVALID` for bad input,
   *   `MANIFEST_UNKNOWN` when the upstream does not have it, `TOOMANYREQUESTS`/`UNAVAILABLE` when the upstream
   *   cannot answer and nothing is cached.
   */
  get(name: string, reference: string): Promise<ManifestRecord>;
}

/** Creates the manifest service. */
export function createManifestService(deps: RegistryDeps): ManifestService {
  const { stores, log } = deps;
  const flights = createSingleFlight();

  /** Fetches `reference` upstream, verifies it, stores it (and links its blobs); nothing is stored on failure. */
  async function fetchAndStore(resolved: ResolvedName, reference: string, expected?: Digest): Promise<ManifestRecord> {
    const upstream = deps.upstreamFor(resolved.rule);
    const fetched = await upstream.getManifest(resolved.upstreamRepository, reference, deps.maxManifestBytes);
    const mediaType = classifyManifest(fetched.contentType, fetched.body);
    const digest = expected ? digestLike(expected, fetched.body) : sha256Digest(fetched.body);
    const advertised = fetched.digestHeader && isDigest(fetched.digestHeader) ? fetched.digestHeader : undefined;
    if ((expected && digest !== expected) || (advertised && advertised.startsWith('sha256:') && digest.startsWith('sha256:') && advertised !== digest)) {
      log.warn('upstream manifest did not match its digest', { name: resolved.name, reference, expected: expected ?? advertised, actual: digest });
      throw new RegistryError('DIGEST_INVALID', 'upstream manifest did not match its digest', { status: 502 });
    }
    const record: ManifestRecord = { name: resolved.name, digest, mediaType, size: fetched.body.length, body: fetched.body };
    await stores.manifests.putManifest(record, referencedBlobs(mediaType, fetched.body));
    return record;
  }

  async function byDigest(resolved: ResolvedName, digest: Digest): Promise<ManifestRecord> {
    const cached = await stores.manifests.getManifest(resolved.name, digest);
    if (cached) return cached;
    try {
      return await flights.run(`${resolved.name}@${digest}`, () => fetchAndStore(resolved, digest, digest));
    } catch (err) {
      throw toRegistryError(err, 'MANIFEST_UNKNOWN');
    }
  }

  /** Fetches a tag and points the index at what came back. */
  async function fillTag(resolved: ResolvedName, tag: string): Promise<ManifestRecord> {
    return flights.run(`${resolved.name}:${tag}`, async () => {
      const record = await fetchAndStore(resolved, tag);
      const now = deps.now();
      await stores.tags.putTag({ name: resolved.name, tag, digest: record.digest, mediaType: record.mediaType, size: record.size, fetchedAt: now, checkedAt: now });
      return record;
    });
  }

  /** Re-checks a stale tag with a HEAD; moves it only when the upstream digest changed. */
  async function revalidate(resolved: ResolvedName, tag: string, current: Digest): Promise<ManifestRecord> {
    const head = await deps.upstreamFor(resolved.rule).headManifest(resolved.upstreamRepository, tag);
    const moved = head.digest && isDigest(head.digest) ? head.digest : undefined;
    if (moved === current) {
      const cached = await stores.manifests.getManifest(resolved.name, current);
      if (cached) {
        await stores.tags.touchTag(resolved.name, tag, deps.now());
        return cached;
      }
    }
    if (!moved) return fillTag(resolved, tag); // no Docker-Content-Digest: GET and hash
    const record = (await stores.manifests.getManifest(resolved.name, moved)) ?? (await fetchAndStore(resolved, moved, moved));
    const now = deps.now();
    await stores.tags.putTag({ name: resolved.name, tag, digest: record.digest, mediaType: record.mediaType, size: record.size, fetchedAt: now, checkedAt: now });
    log.info('tag moved upstream', { name: resolved.name, tag, oldDigest: current, newDigest: record.digest });
    return record;
  }

  async function byTag(resolved: ResolvedName, tag: string): Promise<ManifestRecord> {
    const entry = await stores.tags.getTag(resolved.name, tag);
    const cached = entry && (await stores.manifests.getManifest(resolved.name, entry.digest));
    if (entry && cached && deps.now() - entry.checkedAt < resolved.rule.ttlSeconds * 1000) return cached;
    if (entry && cached) {
      try {
        return await flights.run(`${resolved.name}:${tag}?check`, () => revalidate(resolved, tag, entry.digest));
      } catch (err) {
        // Upstream down, rate-limited, or the tag gone: never worse than stale.
        log.warn('serving stale tag', { name: resolved.name, tag, digest: entry.digest, reason: err instanceof Error ? err.message : String(err) });
        if (err instanceof UpstreamError) return cached;
        throw err;
      }
    }
    try {
      return await fillTag(resolved, tag);
    } catch (err) {
      throw toRegistryError(err, 'MANIFEST_UNKNOWN');
    }
  }

  return {
    async get(name, reference) {
      const resolved = deps.resolve(name);
      const ref = parseReference(reference);
      return ref.kind === 'digest' ? byDigest(resolved, ref.digest) : byTag(resolved, ref.tag);
    },
  };
}
