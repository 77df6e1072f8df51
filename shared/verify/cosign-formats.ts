/**
 * cosign's and Sigstore's formats as stored in a registry (cosign specs/SIGNATURE_SPEC.md; OCI image spec 1.1
 * "artifactType"; Sigstore bundle v0.3):
 * - **tag scheme** (cosign's default): the signatures of `sha256:<hex>` are the layers of the manifest tagged
 *   `sha256-<hex>.sig` in the same repository; each layer's blob is a simple-signing payload
 *   (`application/vnd.dev.cosign.simplesigning.v1+json`) and its annotation `dev.cosignproject.cosign/signature`
 *   holds the base64 signature over those bytes.
 * - **OCI 1.1 referrers**: the same manifest with `artifactType` `application/vnd.dev.cosign.artifact.sig.v1+json`
 *   and a `subject` naming the signed manifest (`cosign sign --registry-referrers-mode=oci-1-1`), or a manifest of
 *   `artifactType` `application/vnd.dev.sigstore.bundle*` whose layer is a Sigstore bundle (cosign 3's default).
 */
import { isDigest, type Digest } from '../oci/digest.js';

export const SIMPLE_SIGNING = 'application/vnd.dev.cosign.simplesigning.v1+json';
export const SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature';
export const COSIGN_SIGNATURE_ARTIFACT = 'application/vnd.dev.cosign.artifact.sig.v1+json';
/** Sigstore bundle media types all start so (`…bundle.v0.3+json`, `…bundle+json;version=0.3`). */
export const SIGSTORE_BUNDLE_PREFIX = 'application/vnd.dev.sigstore.bundle';
/** DSSE envelopes (cosign attestations, `.att` tags): signature material too, pullable like signatures. */
export const DSSE_ENVELOPE = 'application/vnd.dsse.envelope.v1+json';
/** The `critical.type` of a cosign image signature payload. */
export const COSIGN_SIGNATURE_TYPE = 'cosign container image signature';
/** The predicate type of an image signature in a Sigstore bundle's in-toto statement (cosign 3). */
export const COSIGN_SIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1';

/** The tag cosign's tag scheme stores the signatures of `digest` under: `sha256-<hex>.sig`. */
export function signatureTag(digest: Digest): string {
  return `${digest.replace(':', '-')}.sig`;
}

/** A descriptor as found in manifests (only the fields read here). */
export interface Descriptor {
  mediaType?: string;
  digest?: string;
  size?: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** The parts of an image manifest read here. */
export interface ParsedManifest {
  mediaType?: string;
  artifactType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: Descriptor[];
  subject?: Descriptor;
}

/** Parses manifest bytes as JSON; undefined when they are not a JSON object. */
export function parseManifest(body: Uint8Array): ParsedManifest | undefined {
  try {
    const parsed = JSON.parse(Buffer.from(body).toString('utf8')) as unknown;
    return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as ParsedManifest) : undefined;
  } catch {
    return undefined;
  }
}

const isSignatureLayerType = (t: unknown) =>
  typeof t === 'string' && (t === SIMPLE_SIGNING || t === DSSE_ENVELOPE || t.startsWith(SIGSTORE_BUNDLE_PREFIX));

/**
 * True for a manifest that holds signature material only: an image manifest with at least one layer, every layer
 * a simple-signing payload, a Sigstore bundle or a DSSE envelope. Such a manifest runs nothing (no client unpacks
 * these layer types), and clients fetch it to verify signatures themselves, so a signature policy lets it through.
 */
export function isSignatureArtifact(body: Uint8Array): boolean {
  const m = parseManifest(body);
  if (!m || !Array.isArray(m.layers) || m.layers.length === 0) return false;
  return m.layers.every((l) => isSignatureLayerType(l?.mediaType));
}

/** The platform manifests an image index lists (valid digests only, at most `max`). */
export function indexChildren(body: Uint8Array, max: number): Digest[] {
  const m = parseManifest(body);
  const out: Digest[] = [];
  for (const d of m?.manifests ?? []) {
    if (typeof d?.digest === 'string' && isDigest(d.digest) && !out.includes(d.digest)) out.push(d.digest);
    if (out.length >= max) break;
  }
  return out;
}
