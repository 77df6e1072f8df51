/**
 * Sigstore bundles (protobuf-specs `dev.sigstore.bundle.v1.Bundle`, media types `application/vnd.dev.sigstore.bundle*`)
 * signed with a key, parsed and validated with `@sigstore/bundle` and verified with `@sigstore/verify`:
 * - a **DSSE envelope** (cosign 3's image signature): the payload is an in-toto statement whose `predicateType` is
 *   `https://sigstore.dev/cosign/sign/v1` and whose `subject` names the digest being verified (`digest.sha256`);
 * - a **message signature** over the manifest's own bytes: its `messageDigest` must be the manifest's digest.
 * A key policy trusts keys, not a transparency log: the bundle's tlog entries and timestamps are not checked (no
 * trust root is fetched at run time). Bundles whose verification material is a certificate (keyless signing) are
 * not supported and count as signed by an unknown key.
 */
import { bundleFromJSON, isBundleWithPublicKey, type Bundle } from '@sigstore/bundle';
import { Verifier, toSignedEntity, type TrustMaterial } from '@sigstore/verify';
import { parseDigest, type Digest } from '../oci/digest.js';
import { COSIGN_SIGN_PREDICATE } from './cosign-formats.js';
import type { TrustedKey } from './keys.js';
import type { SignatureCheck } from './simple-signing.js';

const IN_TOTO = 'application/vnd.in-toto+json';

/** Trust material holding one key whatever the bundle's key hint says, and nothing else. */
function trusting(key: TrustedKey): TrustMaterial {
  return {
    certificateAuthorities: [],
    timestampAuthorities: [],
    tlogs: [],
    ctlogs: [],
    publicKey: () => ({ publicKey: key.key, validFor: () => true }),
  };
}

/** True when `key` verifies the bundle's signature (over the DSSE pre-authentication encoding, or over `artifact`). */
function verifiesWith(bundle: Bundle, key: TrustedKey, artifact: Buffer): boolean {
  // Log entries and timestamps are left out: verifying them needs a trust root this policy does not have.
  const entity = { ...toSignedEntity(bundle, artifact), tlogEntries: [], timestamps: [] };
  try {
    new Verifier(trusting(key), { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 }).verify(entity);
    return true;
  } catch {
    return false;
  }
}

/** The digest (`sha256:<hex>`) an image-signature statement names, or a short reason why it names none. */
function statementSubject(payload: Buffer): { digest?: string } {
  try {
    const statement = JSON.parse(payload.toString('utf8')) as { predicateType?: unknown; subject?: Array<{ digest?: { sha256?: unknown } }> };
    if (statement.predicateType !== COSIGN_SIGN_PREDICATE || !Array.isArray(statement.subject) || statement.subject.length !== 1) return {};
    const hex = statement.subject[0]?.digest?.sha256;
    return typeof hex === 'string' ? { digest: `sha256:${hex}` } : {};
  } catch {
    return {};
  }
}

/**
 * Checks one Sigstore bundle (`json`: the bundle layer's parsed JSON) for the manifest `digest` with bytes
 * `manifest`. A bundle that does not parse, or is keyless, is `unknown-key`.
 */
export function checkBundle(json: unknown, digest: Digest, manifest: Uint8Array, keys: readonly TrustedKey[]): SignatureCheck {
  let bundle: Bundle;
  try {
    bundle = bundleFromJSON(json);
  } catch {
    return { kind: 'unknown-key' };
  }
  if (!isBundleWithPublicKey(bundle)) return { kind: 'unknown-key' };
  const artifact = Buffer.from(manifest);
  const signer = keys.find((k) => verifiesWith(bundle, k, artifact));
  if (!signer) return { kind: 'unknown-key' };
  if (bundle.content.$case === 'dsseEnvelope') {
    const { payloadType, payload } = bundle.content.dsseEnvelope;
    const named = payloadType === IN_TOTO ? statementSubject(payload).digest : undefined;
    return named === digest ? { kind: 'verified', keyId: signer.id } : { kind: 'digest-mismatch', keyId: signer.id, ...(named ? { named } : {}) };
  }
  // A message signature verified over this manifest's bytes signs exactly them; its stated digest must agree.
  const { messageDigest } = bundle.content.messageSignature;
  const named = `sha256:${Buffer.from(messageDigest.digest).toString('hex')}`;
  const sha256 = parseDigest(digest)?.algorithm === 'sha256';
  return sha256 && named === digest ? { kind: 'verified', keyId: signer.id } : { kind: 'digest-mismatch', keyId: signer.id, named };
}
