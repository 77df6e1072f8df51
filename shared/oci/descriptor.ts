/**
 * Descriptors (OCI image spec, "Descriptors"): the `{mediaType, digest, size}` records that index manifests,
 * layers and referrers. {@link isDescriptor} checks an upstream's JSON before the cache serves or keeps it.
 */
import { isDigest } from './digest.js';

/** A descriptor: the required fields, and those optional ones the cache reads (others pass as they are). */
export interface OciDescriptor {
  mediaType: string;
  digest: string;
  /** Bytes of the content it describes. */
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

const isStringMap = (v: unknown): v is Record<string, string> =>
  v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((s) => typeof s === 'string');

/**
 * Whether `value` is a descriptor: an object with a non-empty string `mediaType`, a `digest` the cache can verify
 * (sha256/sha512, oci/digest.ts), a `size` that is a non-negative integer, and, when present, a string
 * `artifactType` and `annotations` mapping strings to strings (the spec's types for those fields).
 */
export function isDescriptor(value: unknown): value is OciDescriptor {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const d = value as Record<string, unknown>;
  return (
    typeof d.mediaType === 'string' && d.mediaType.length > 0 &&
    typeof d.digest === 'string' && isDigest(d.digest) &&
    typeof d.size === 'number' && Number.isSafeInteger(d.size) && d.size >= 0 &&
    (d.artifactType === undefined || typeof d.artifactType === 'string') &&
    (d.annotations === undefined || isStringMap(d.annotations))
  );
}
