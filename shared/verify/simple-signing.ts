/**
 * cosign's simple-signing signatures (cosign specs/SIGNATURE_SPEC.md, "Simple Signing"; containers-signature(5)
 * for the payload): the payload is JSON
 * `{"critical":{"identity":{"docker-reference":…},"image":{"docker-manifest-digest":"sha256:…"},"type":"cosign container image signature"},"optional":…}`
 * and the signature (base64, in the layer annotation) is over the payload bytes exactly: ECDSA over their SHA-256
 * (ASN.1 DER), RSA PKCS#1 v1.5 over their SHA-256, or pure Ed25519. `docker-reference` is ignored, as the spec
 * says (images are mirrored under other names); the digest must be exactly the one being verified.
 */
import { verify as cryptoVerify } from 'node:crypto';
import type { Digest } from '../oci/digest.js';
import { COSIGN_SIGNATURE_TYPE } from './cosign-formats.js';
import type { TrustedKey } from './keys.js';

/** What one signature says about a digest under a key set. */
export type SignatureCheck =
  /** A trusted key signed a payload naming this digest. */
  | { kind: 'verified'; keyId: string }
  /** A trusted key signed it, but the payload names another image (a signature replayed onto this one) or is no image signature. */
  | { kind: 'digest-mismatch'; keyId: string; named?: string }
  /** No trusted key verifies the signature (another signer, or the payload or signature was altered). */
  | { kind: 'unknown-key' };

/** Hashes a key kind's signatures may be made over (cosign signs SHA-256; newer releases pick SHA-384/512 for P-384/P-521). */
const HASHES: Record<TrustedKey['kind'], Array<string | null>> = {
  'ecdsa-p256': ['sha256'],
  'ecdsa-p384': ['sha256', 'sha384'],
  'ecdsa-p521': ['sha256', 'sha512'],
  rsa: ['sha256'],
  ed25519: [null],
};

/** True when `signature` over `data` verifies with `key` (any hash cosign uses for its kind). Never throws. */
export function signatureVerifies(key: TrustedKey, data: Uint8Array, signature: Uint8Array): boolean {
  return HASHES[key.kind].some((hash) => {
    try {
      return cryptoVerify(hash, data, key.key, signature);
    } catch {
      return false;
    }
  });
}

/** The `docker-manifest-digest` of a simple-signing payload (JSON keys matched case-insensitively, as cosign's Go decoder does). */
function signedDigest(payload: Uint8Array): { type?: unknown; digest?: unknown } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(payload).toString('utf8'));
  } catch {
    return {};
  }
  const critical = (parsed as { critical?: unknown } | null)?.critical as Record<string, unknown> | undefined;
  const image = critical?.image;
  if (!image || typeof image !== 'object') return { type: critical?.type };
  const keys = Object.keys(image).filter((k) => k.toLowerCase() === 'docker-manifest-digest');
  // Two spellings of the key would make "which digest is signed" ambiguous: neither counts.
  return { type: critical?.type, digest: keys.length === 1 ? (image as Record<string, unknown>)[keys[0]] : undefined };
}

/**
 * Checks one simple-signing signature (`signatureB64` from the layer annotation, `payload` the layer's bytes, already
 * checked against the layer digest) against `keys` for `digest`.
 */
export function checkSimpleSigning(payload: Uint8Array, signatureB64: string, digest: Digest, keys: readonly TrustedKey[]): SignatureCheck {
  const signature = Buffer.from(signatureB64, 'base64');
  const signer = keys.find((k) => signatureVerifies(k, payload, signature));
  if (!signer) return { kind: 'unknown-key' };
  const signed = signedDigest(payload);
  if (signed.type !== COSIGN_SIGNATURE_TYPE || signed.digest !== digest) {
    return { kind: 'digest-mismatch', keyId: signer.id, ...(typeof signed.digest === 'string' ? { named: signed.digest.slice(0, 80) } : {}) };
  }
  return { kind: 'verified', keyId: signer.id };
}
