/**
 * A manifest's way into the cache from its upstream (manifests.ts uses it for misses, tag-check.ts for moved tags):
 * fetched, its digest verified, checked to be a manifest of the type it was served as, judged under the rule's
 * signature policy and stored with the verdict; nothing is stored on failure or refusal. "Does not exist" answers
 * are remembered briefly (negative cache) so repeated misses skip the upstream. A manifest over `maxManifestBytes`
 * is refused for good (502 `MANIFEST_INVALID` naming the limit, not a 503 inviting retries), and the refusal is
 * remembered like a miss.
 */
import { digestLike, isDigest, sha256Digest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { classifyManifest, referencedBlobs } from '../oci/media-types.js';
import type { ManifestRecord } from '../store/ports.js';
import { UpstreamError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import { createNegativeCache } from './negative-cache.js';
import type { ResolvedName } from './rules.js';
import type { SignatureCheck } from './signature-check.js';

/** Fetching and storing manifests, and the negative cache in front of it. */
export interface ManifestFetcher {
  /**
   * Fetches `reference` upstream, verifies its digest (`expected`, else the upstream's `Docker-Content-Digest`) and
   * that it is a manifest (`classifyManifest`), judges it under the rule's signature policy (signature-check.ts),
   * stores it with the verdict and its blob references; nothing is stored on failure or refusal.
   * @throws RegistryError `DIGEST_INVALID` (502) on a digest mismatch, `MANIFEST_INVALID` (502) for an answer that
   *   is not a manifest or has a descriptor that is not one (naming the field), `DENIED` when the policy refuses it;
   *   UpstreamError when the upstream cannot answer.
   */
  fetchAndStore(resolved: ResolvedName, reference: string, expected?: Digest): Promise<ManifestRecord>;
  /**
   * Runs `fn`, remembering an upstream "not found" (or "denied") and a manifest too large under `key` for the
   * rule's negative-cache time.
   * @throws RegistryError `MANIFEST_UNKNOWN` while a miss is remembered, `MANIFEST_INVALID` (502) for a manifest
   *   over `maxManifestBytes`; what `fn` throws otherwise.
   */
  rememberingMisses<T>(resolved: ResolvedName, key: string, fn: () => Promise<T>): Promise<T>;
}

/** Creates the fetcher over the registry's stores and upstream clients. */
export function createManifestFetcher(deps: RegistryDeps, signatures: SignatureCheck): ManifestFetcher {
  const { stores, log } = deps;
  /** Remembered answers: the upstream does not have it, or its manifest is over `maxManifestBytes`. */
  const missing = createNegativeCache<'unknown' | 'too-large'>(() => deps.now());
  const tooLarge = (cause?: unknown) =>
    new RegistryError('MANIFEST_INVALID', `manifest larger than maxManifestBytes (${deps.maxManifestBytes} bytes)`, { status: 502, cause });

  async function fetchAndStore(resolved: ResolvedName, reference: string, expected?: Digest): Promise<ManifestRecord> {
    const upstream = deps.upstreamFor(resolved.rule);
    const fetched = await upstream.getManifest(resolved.upstreamRepository, reference, deps.maxManifestBytes);
    const digest = expected ? digestLike(expected, fetched.body) : sha256Digest(fetched.body);
    const advertised = fetched.digestHeader && isDigest(fetched.digestHeader) ? fetched.digestHeader : undefined;
    if ((expected && digest !== expected) || (advertised && advertised.startsWith('sha256:') && digest.startsWith('sha256:') && advertised !== digest)) {
      log.warn('upstream manifest did not match its digest', { name: resolved.name, reference, expected: expected ?? advertised, actual: digest });
      throw new RegistryError('DIGEST_INVALID', 'upstream manifest did not match its digest', { status: 502 });
    }
    // The right bytes, but are they a manifest (not a login page), of the type they were served as?
    const mediaType = classifyManifest(fetched.contentType, fetched.body);
    const record: ManifestRecord = { name: resolved.name, digest, mediaType, size: fetched.body.length, body: fetched.body, pulledAt: deps.now() };
    const verification = await signatures.judgeNew(resolved, record);
    if (verification) record.verification = verification;
    await stores.manifests.putManifest(record, referencedBlobs(mediaType, fetched.body), resolved.rule.prefix);
    await signatures.stored(resolved, record);
    return record;
  }

  async function rememberingMisses<T>(resolved: ResolvedName, key: string, fn: () => Promise<T>): Promise<T> {
    const k = `${resolved.name}\n${key}`;
    const known = missing.get(k);
    if (known) throw known === 'too-large' ? tooLarge() : new RegistryError('MANIFEST_UNKNOWN');
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err;
      const ttlMs = resolved.rule.negativeCacheSeconds * 1000;
      if (err.failure === 'not-found' || err.failure === 'denied') missing.remember(k, ttlMs, 'unknown');
      if (err.failure !== 'too-large') throw err;
      missing.remember(k, ttlMs, 'too-large');
      throw tooLarge(err);
    }
  }

  return { fetchAndStore, rememberingMisses };
}
