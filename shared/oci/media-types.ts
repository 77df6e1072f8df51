/**
 * Manifest media types (OCI image spec "Media Types"; Docker "Image Manifest V2, Schema 2") and how an upstream
 * answer is checked and classified before it is stored: a JSON object with `schemaVersion` 2 whose `mediaType`
 * (when present) and shape agree with the `Content-Type` it came with (see {@link classifyManifest}).
 */
import { descriptorProblem } from './descriptor.js';
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
 * Checks that an upstream answer is a manifest and works out the media type it is stored and served as.
 * The body must be a JSON object with `schemaVersion` 2 (image spec "Image Manifest" / "Image Index"; Docker
 * "Image Manifest V2, Schema 2"); the type comes from the `Content-Type` when that is a manifest type we serve,
 * else from the body's `mediaType`, else from its shape (`manifests[]`: an OCI index; `config` + `layers[]`: an
 * OCI manifest); a `mediaType` in the body must agree with the `Content-Type`, and the body must have the shape of
 * its type, every descriptor in it valid (digest, non-negative integer size, string mediaType: see badDescriptor). Any other `Content-Type` (text/html, application/json, a blob type) is never served as a manifest
 * type: the body decides. Captive portals and login pages answering 200 are the real-world source of non-manifests.
 * @throws RegistryError `MANIFEST_INVALID`: 502 for an answer that is not a manifest (the upstream's fault,
 *   nothing is stored); 400 for Docker schema1 (refused on purpose: its digest is not the body's SHA-256 and no
 *   current client needs it).
 */
export function classifyManifest(contentType: string | undefined, body: Uint8Array): string {
  const ct = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (ct === DOCKER_SCHEMA1 || ct === DOCKER_SCHEMA1_SIGNED) throw schema1();
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw notManifest('is not JSON');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw notManifest('is not a JSON object');
  const m = parsed as Record<string, unknown>;
  if (m.schemaVersion === 1) throw schema1();
  if (m.schemaVersion !== 2) throw notManifest('has no schemaVersion 2');
  const declared = m.mediaType;
  if (declared !== undefined && !isServedType(declared)) throw notManifest(`has an unsupported mediaType ${JSON.stringify(declared).slice(0, 100)}`);
  if (declared !== undefined && isServedType(ct) && declared !== ct) throw notManifest(`says mediaType ${declared} but was served as ${ct}`);
  const type = isServedType(ct) ? ct : (declared ?? (Array.isArray(m.manifests) ? OCI_INDEX : OCI_MANIFEST));
  const shaped = isIndexMediaType(type)
    ? Array.isArray(m.manifests)
    : m.config !== null && typeof m.config === 'object' && Array.isArray(m.layers);
  if (!shaped) throw notManifest(isIndexMediaType(type) ? `(${type}) has no manifests list` : `(${type}) has no config and layers`);
  const bad = badDescriptor(m, isIndexMediaType(type));
  if (bad) throw notManifest(`has an invalid descriptor: ${bad}`);
  return type;
}

/**
 * The first descriptor of a manifest that is not one (oci/descriptor.ts), as `<field>: <problem>` (e.g.
 * `layers[2]: size is not a non-negative integer`), or undefined. Image spec "Image Manifest": `config`, each of
 * `layers` and `subject` are descriptors; "Image Index": each of `manifests`, and `subject`. The cache stores the
 * blobs and manifests they name by digest and size, so a descriptor it cannot verify is a manifest it cannot serve.
 */
function badDescriptor(m: Record<string, unknown>, index: boolean): string | undefined {
  const fields: Array<[string, unknown]> = index
    ? (m.manifests as unknown[]).map((d, i) => [`manifests[${i}]`, d])
    : [['config', m.config], ...(m.layers as unknown[]).map((d, i): [string, unknown] => [`layers[${i}]`, d])];
  if (m.subject !== undefined) fields.push(['subject', m.subject]);
  for (const [field, value] of fields) {
    const problem = descriptorProblem(value);
    if (problem) return `${field}: ${problem}`;
  }
  return undefined;
}

function isServedType(value: unknown): value is (typeof MANIFEST_MEDIA_TYPES)[number] {
  return typeof value === 'string' && (MANIFEST_MEDIA_TYPES as readonly string[]).includes(value);
}

function notManifest(why: string): RegistryError {
  return new RegistryError('MANIFEST_INVALID', `the upstream answered something that is not a manifest: it ${why}`, { status: 502 });
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
