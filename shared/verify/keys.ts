/**
 * The public keys of a signature policy (config `rules[].verify.keys`): PEM `PUBLIC KEY` blocks (SubjectPublicKeyInfo,
 * what `cosign generate-key-pair` writes to `cosign.pub`), of the kinds cosign signs with: ECDSA on P-256, P-384 or
 * P-521, Ed25519, and RSA of at least 2048 bits. Parsed once with Node's crypto; a key that is not one of these is
 * refused when the config is loaded, not on the first pull.
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';

/** One trusted public key. `id` is `sha256:` + the hex SHA-256 of its DER SubjectPublicKeyInfo (first 16 hex). */
export interface TrustedKey {
  key: KeyObject;
  id: string;
  /** `ecdsa-p256`, `ecdsa-p384`, `ecdsa-p521`, `ed25519` or `rsa`. */
  kind: 'ecdsa-p256' | 'ecdsa-p384' | 'ecdsa-p521' | 'ed25519' | 'rsa';
}

const CURVES: Record<string, TrustedKey['kind']> = { 'prime256v1': 'ecdsa-p256', 'secp384r1': 'ecdsa-p384', 'secp521r1': 'ecdsa-p521' };

/** True when `text` holds a PEM block (an inline key) rather than a file path. */
export function isInlinePem(text: string): boolean {
  return text.includes('-----BEGIN ');
}

/**
 * Parses one PEM public key.
 * @throws Error naming what is wrong (not PEM, a private key, an unsupported curve or type, RSA under 2048 bits).
 */
export function parseTrustedKey(pem: string): TrustedKey {
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) throw new Error('a private key was given: give the public key (cosign.pub)');
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new Error(`not a PEM public key (${(err as Error).message})`);
  }
  const details = key.asymmetricKeyDetails ?? {};
  let kind: TrustedKey['kind'] | undefined;
  if (key.asymmetricKeyType === 'ec') kind = CURVES[details.namedCurve ?? ''];
  else if (key.asymmetricKeyType === 'ed25519') kind = 'ed25519';
  else if (key.asymmetricKeyType === 'rsa' && (details.modulusLength ?? 0) >= 2048) kind = 'rsa';
  if (!kind) {
    const what = key.asymmetricKeyType === 'rsa' ? `RSA of ${details.modulusLength} bits` : `${key.asymmetricKeyType}${details.namedCurve ? ` on ${details.namedCurve}` : ''}`;
    throw new Error(`unsupported key type ${what}: use ECDSA P-256/P-384/P-521, Ed25519 or RSA of at least 2048 bits`);
  }
  const der = key.export({ type: 'spki', format: 'der' });
  return { key, kind, id: `sha256:${createHash('sha256').update(der).digest('hex').slice(0, 16)}` };
}

/**
 * The identity of a key set: `sha256:` + the first 16 hex of the SHA-256 over the sorted key ids. Stored with every
 * verification result, so results made under other keys are recognised and verified again.
 */
export function keySetId(keys: readonly TrustedKey[]): string {
  const ids = keys.map((k) => k.id).sort();
  return `sha256:${createHash('sha256').update(ids.join('\n')).digest('hex').slice(0, 16)}`;
}
