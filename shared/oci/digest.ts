/**
 * Digests (OCI image spec, "Digests"): `algorithm:encoded`. We verify `sha256` (64 lowercase hex) and
 * `sha512` (128 lowercase hex); other registered-looking algorithms are rejected as `DIGEST_INVALID`.
 */
import { createHash, type Hash } from 'node:crypto';
import { RegistryError } from './errors.js';

/** A validated digest, e.g. `sha256:4f1d...`. */
export type Digest = `${'sha256' | 'sha512'}:${string}`;

const ENCODED_LENGTH = { sha256: 64, sha512: 128 } as const;
const DIGEST_RE = /^(sha256|sha512):([a-f0-9]+)$/;

/** Parses a digest string; returns `undefined` when it is not a digest we can verify. */
export function parseDigest(value: string): { algorithm: 'sha256' | 'sha512'; encoded: string } | undefined {
  const m = DIGEST_RE.exec(value);
  if (!m) return undefined;
  const algorithm = m[1] as 'sha256' | 'sha512';
  if (m[2].length !== ENCODED_LENGTH[algorithm]) return undefined;
  return { algorithm, encoded: m[2] };
}

/** True for a syntactically valid digest we can verify. */
export function isDigest(value: string): value is Digest {
  return parseDigest(value) !== undefined;
}

/** True when the reference looks like a digest (has `:`), valid or not — tags cannot contain `:`. */
export function looksLikeDigest(reference: string): boolean {
  return reference.includes(':');
}

/**
 * Validates a digest from a request or an upstream descriptor.
 * @throws RegistryError `DIGEST_INVALID` (400) when malformed or of an unsupported algorithm.
 */
export function assertDigest(value: string): Digest {
  if (!isDigest(value)) throw new RegistryError('DIGEST_INVALID', 'invalid digest', { detail: { digest: value.slice(0, 200) } });
  return value;
}

/** A hasher for the digest's algorithm; `hex()` gives the encoded part once all bytes are in. */
export function hasherFor(digest: Digest): Hash {
  return createHash(parseDigest(digest)!.algorithm);
}

/** `sha256:<hex>` of the given bytes. */
export function sha256Digest(bytes: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Digest of `bytes` with the same algorithm as `like` (so a sha512 reference is verified with sha512). */
export function digestLike(like: Digest, bytes: Uint8Array): Digest {
  const { algorithm } = parseDigest(like)!;
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}` as Digest;
}
