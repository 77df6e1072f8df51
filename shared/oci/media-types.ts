/**
 * Manifest media types (OCI image spec "Media Types"; Docker "Image Manifest V2, Schema 2") and how an upstream
 * answer is classified: by its `Content-Type` first, then by the body's shape — never by the optional
 * `mediaType` field alone.
 */
import { RegistryError } from './errors.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_MANIFEST_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_SCHEMA1 = 'application/vnd.docker.distribution.manifest.v1+json';
export const DOCKER_SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

/** Manifest media types this cache stores and serves. */
export const MANIFEST_MEDIA_TYPES = [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST] as const;

/** The `Accept` header sent upstream for manifests: every type we serve, indexes first. */
export const MANIFEST_ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');

/** True for an image index / manifest list (a manifest of manifests). */
export function isIndexMediaType(mediaType: string): boolean {
  return mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST;
}

/**
 * Works out a manifest's media type from the upstream `Content-Type` and the body.
 * @throws RegistryError `MANIFEST_INVALID` for Docker schema1 (refused on purpose: its digest is not the
 *   body's SHA-256 and no current client needs it) and for bodies that are not a manifest.
 */
export function classifyManifest(contentType: string | undefined, body: Uint8Array): string {
  const ct = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (ct === DOCKER_SCHEMA1 || ct === DOCKER_SCHEMA1_SIGNED) throw schema1();
  if ((MANIFEST_MEDIA_TYPES as readonly string[]).includes(ct)) return ct;
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw new RegistryError('MANIFEST_INVALID', 'upstream manifest is not JSON');
  }
  if (parsed === null || typeof parsed !== 'object') throw new RegistryError('MANIFEST_INVALID', 'upstream manifest is not a JSON object');
  if (parsed.schemaVersion === 1) throw schema1();
  if (typeof parsed.mediaType === 'string' && (MANIFEST_MEDIA_TYPES as readonly string[]).includes(parsed.mediaType)) return parsed.mediaType;
  if (Array.isArray(parsed.manifests)) return OCI_INDEX;
  if (parsed.config && Array.isArray(parsed.layers)) return OCI_MANIFEST;
  throw new RegistryError('MANIFEST_INVALID', 'upstream answer is not an image manifest or index');
}

function schema1(): RegistryError {
  return new RegistryError('MANIFEST_INVALID', 'Docker schema1 manifests are not supported; ask the publisher for a schema2 or OCI image');
}

/** Digests of the blobs a manifest references (config, layers, subject is a manifest so not included). */
export function referencedBlobs(mediaType: string, body: Uint8Array): string[] {
  if (isIndexMediaType(mediaType)) return [];
  try {
    const m = JSON.parse(Buffer.from(body).toString('utf8')) as { config?: { digest?: unknown }; layers?: Array<{ digest?: unknown }> };
    const out: string[] = [];
    if (typeof m.config?.digest === 'string') out.push(m.config.digest);
    for (const l of m.layers ?? []) if (typeof l?.digest === 'string') out.push(l.digest);
    return out;
  } catch {
    return [];
  }
}
