/**
 * Finds and checks the cosign signatures of one manifest at its upstream: the OCI 1.1 referrers of its digest
 * (cosign signature artifacts and Sigstore bundles) and cosign's tag scheme (`sha256-<hex>.sig`), both asked at once.
 * Signature material is read from the upstream for the check only (nothing of it is stored here; clients that pull it
 * through the cache get it stored like any manifest). Everything read is bounded: at most {@link SIGNATURE_LIMITS}
 * manifests, layers and bytes, and every byte is checked against its digest before it is looked at.
 *
 * Upstream cost per check: one referrers request and one manifest GET of the `.sig` tag, then one manifest GET per
 * referrer considered and one blob GET per signature layer read, stopping at the first signature that verifies.
 */
import { digestLike, isDigest, type Digest } from '../oci/digest.js';
import type { UpstreamClient } from '../upstream/client-types.js';
import { UpstreamError } from '../upstream/errors.js';
import { readCapped } from '../upstream/response-body.js';
import {
  COSIGN_SIGNATURE_ARTIFACT, SIGNATURE_ANNOTATION, SIGSTORE_BUNDLE_PREFIX, SIMPLE_SIGNING, parseManifest, signatureTag,
  type Descriptor,
} from './cosign-formats.js';
import type { TrustedKey } from './keys.js';
import { checkSimpleSigning, type SignatureCheck } from './simple-signing.js';
import { checkBundle } from './sigstore-bundle.js';

/** Bounds of one check: referrer manifests considered, signature layers read, bytes per signature manifest and layer. */
export const SIGNATURE_LIMITS = { manifests: 8, layers: 16, manifestBytes: 1024 * 1024, layerBytes: 256 * 1024 };

/** Why a manifest is not verified: no signature at all, none by a trusted key, or a trusted signature of another image. */
export type SignatureFailure = 'unsigned' | 'unknown-key' | 'digest-mismatch';

/** What the check found. `via` says where the verifying signature was found. */
export type SignatureVerdict =
  | { verified: true; keyId: string; via: 'tag' | 'referrers' }
  | { verified: false; reason: SignatureFailure; /** signatures looked at */ found: number };

type Upstream = Pick<UpstreamClient, 'getManifest' | 'getBlob' | 'getReferrers'>;
/** A signature manifest found for the digest, and how. */
type Found = { via: 'tag' | 'referrers'; layers: Descriptor[] };

/** An upstream "there is none" (404, or 401/403 as registries answer for what does not exist): nothing found. */
const isAbsent = (err: unknown) => err instanceof UpstreamError && (err.failure === 'not-found' || err.failure === 'denied');

/**
 * The upstream has no (usable) referrers API: a 4xx other than 429, or an answer that is no image index. An outage
 * (5xx, network) or a 429 is the upstream failing, not a lack of signatures.
 */
const noReferrersApi = (err: unknown) =>
  err instanceof UpstreamError && err.failure !== 'rate-limited' && (err.status !== undefined ? err.status < 500 : /non-JSON|not an image index/.test(err.message));

async function signatureManifest(upstream: Upstream, repository: string, reference: string, expected?: Digest): Promise<Descriptor[] | undefined> {
  try {
    const fetched = await upstream.getManifest(repository, reference, SIGNATURE_LIMITS.manifestBytes);
    if (expected && digestLike(expected, fetched.body) !== expected) return undefined;
    const layers = parseManifest(fetched.body)?.layers;
    return Array.isArray(layers) ? layers : undefined;
  } catch (err) {
    if (isAbsent(err)) return undefined;
    throw err;
  }
}

/** Signature manifests listed by the referrers API. An upstream without it (404), or with a broken one, lists none. */
async function byReferrers(upstream: Upstream, repository: string, digest: Digest): Promise<Found[]> {
  let manifests: unknown[];
  try {
    ({ manifests } = await upstream.getReferrers(repository, digest, SIGNATURE_LIMITS.manifestBytes));
  } catch (err) {
    if (noReferrersApi(err)) return [];
    throw err;
  }
  const signatures = manifests
    .map((m) => m as Descriptor)
    .filter((m) => typeof m?.digest === 'string' && isDigest(m.digest))
    .filter((m) => m.artifactType === COSIGN_SIGNATURE_ARTIFACT || (typeof m.artifactType === 'string' && m.artifactType.startsWith(SIGSTORE_BUNDLE_PREFIX)))
    .slice(0, SIGNATURE_LIMITS.manifests);
  const found = await Promise.all(signatures.map((m) => signatureManifest(upstream, repository, m.digest!, m.digest as Digest)));
  return found.flatMap((layers) => (layers ? [{ via: 'referrers' as const, layers }] : []));
}

async function byTag(upstream: Upstream, repository: string, digest: Digest): Promise<Found[]> {
  const layers = await signatureManifest(upstream, repository, signatureTag(digest));
  return layers ? [{ via: 'tag', layers }] : [];
}

/** A signature layer's bytes, checked against its digest; undefined when the upstream has no such blob or they differ. */
async function layerBytes(upstream: Upstream, repository: string, layer: Descriptor): Promise<Buffer | undefined> {
  if (typeof layer.digest !== 'string' || !isDigest(layer.digest)) return undefined;
  if (typeof layer.size === 'number' && layer.size > SIGNATURE_LIMITS.layerBytes) return undefined;
  try {
    const { stream } = await upstream.getBlob(repository, layer.digest);
    const bytes = await readCapped(stream, SIGNATURE_LIMITS.layerBytes, 'signature layer');
    return digestLike(layer.digest, bytes) === layer.digest ? bytes : undefined;
  } catch (err) {
    if (isAbsent(err) || (err instanceof UpstreamError && /larger than/.test(err.message))) return undefined;
    throw err;
  }
}

/** Checks one layer of a signature manifest; undefined for a layer that is no signature. */
async function checkLayer(upstream: Upstream, repository: string, layer: Descriptor, manifest: { digest: Digest; body: Uint8Array }, keys: readonly TrustedKey[]): Promise<SignatureCheck | undefined> {
  const signature = layer.annotations?.[SIGNATURE_ANNOTATION];
  const isSimple = layer.mediaType === SIMPLE_SIGNING && typeof signature === 'string';
  const isBundle = typeof layer.mediaType === 'string' && layer.mediaType.startsWith(SIGSTORE_BUNDLE_PREFIX);
  if (!isSimple && !isBundle) return undefined;
  const bytes = await layerBytes(upstream, repository, layer);
  if (!bytes) return { kind: 'unknown-key' };
  if (isSimple) return checkSimpleSigning(bytes, signature, manifest.digest, keys);
  try {
    return checkBundle(JSON.parse(bytes.toString('utf8')), manifest.digest, manifest.body, keys);
  } catch {
    return { kind: 'unknown-key' };
  }
}

const RANK: Record<SignatureFailure, number> = { unsigned: 0, 'unknown-key': 1, 'digest-mismatch': 2 };

/**
 * Checks whether one of `keys` signed the manifest `manifest` (its digest and bytes) of upstream `repository`.
 * @throws UpstreamError when the upstream cannot answer (5xx, 429, network): the outcome is unknown, not a refusal.
 */
export async function checkSignatures(upstream: Upstream, repository: string, manifest: { digest: Digest; body: Uint8Array }, keys: readonly TrustedKey[]): Promise<SignatureVerdict> {
  const [referred, tagged] = await Promise.all([byReferrers(upstream, repository, manifest.digest), byTag(upstream, repository, manifest.digest)]);
  let reason: SignatureFailure = 'unsigned';
  let found = 0;
  for (const { via, layers } of [...referred, ...tagged]) {
    for (const layer of layers) {
      if (found >= SIGNATURE_LIMITS.layers) break;
      const check = await checkLayer(upstream, repository, layer, manifest, keys);
      if (!check) continue;
      found++;
      if (check.kind === 'verified') return { verified: true, keyId: check.keyId, via };
      if (RANK[check.kind] > RANK[reason]) reason = check.kind;
    }
  }
  return { verified: false, reason, found };
}
