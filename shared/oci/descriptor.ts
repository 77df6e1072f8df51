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
 * What keeps `value` from being a descriptor, naming the field (`"size is not a non-negative integer"`), or
 * undefined when it is one: an object with a non-empty string `mediaType`, a `digest` the cache can verify
 * (sha256/sha512, oci/digest.ts), a `size` that is a non-negative safe integer (bytes), and, when present, a
 * string `artifactType` and `annotations` mapping strings to strings (the spec's types for those fields).
 */
export function descriptorProblem(value: unknown): string | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return 'is not an object';
  const d = value as Record<string, unknown>;
  if (typeof d.mediaType !== 'string' || d.mediaType.length === 0) return 'mediaType is not a non-empty string';
  if (typeof d.digest !== 'string' || !isDigest(d.digest)) return 'digest is not a valid sha256 or sha512 digest';
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) return 'size is not a non-negative integer';
  if (d.artifactType !== undefined && typeof d.artifactType !== 'string') return 'artifactType is not a string';
  if (d.annotations !== undefined && !isStringMap(d.annotations)) return 'annotations is not a map of strings';
  return undefined;
}

/** Whether `value` is a descriptor (see {@link descriptorProblem} for the rules). */
export function isDescriptor(value: unknown): value is OciDescriptor {
  return descriptorProblem(value) === undefined;
}
