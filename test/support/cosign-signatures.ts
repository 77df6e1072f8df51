/**
 * Builds cosign signatures in tests, as cosign lays them out (cosign specs/SIGNATURE_SPEC.md): a key pair generated
 * here, the simple-signing payload naming a manifest digest, its signature in the layer annotation
 * `dev.cosignproject.cosign/signature`, the signature manifest for the tag scheme (`sha256-<hex>.sig`) or as an OCI
 * 1.1 referrer (`artifactType` + `subject`), and key-signed Sigstore bundles (DSSE in-toto statement, or a message
 * signature) built with `@sigstore/bundle`. Artifacts are data (manifest bytes and blobs), pushed by the caller to a
 * fake upstream ({@link putArtifact}) or a real registry ({@link pushArtifact}).
 */
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { bundleToJSON, toDSSEBundle, toMessageSignatureBundle } from '@sigstore/bundle';
import type { FakeUpstream } from './fake-upstream.js';
import { pushBlob, pushManifest } from './images.js';

export const SIMPLE_SIGNING = 'application/vnd.dev.cosign.simplesigning.v1+json';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const BUNDLE_V03 = 'application/vnd.dev.sigstore.bundle.v0.3+json';

const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A key pair of one of the kinds cosign signs with; `publicPem` is what `cosign.pub` holds. */
export interface SigningKey {
  kind: 'p256' | 'p384' | 'ed25519' | 'rsa';
  privateKey: KeyObject;
  publicPem: string;
}

export function generateSigningKey(kind: SigningKey['kind'] = 'p256'): SigningKey {
  const pair =
    kind === 'ed25519' ? generateKeyPairSync('ed25519')
      : kind === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: 2048 })
        : generateKeyPairSync('ec', { namedCurve: kind === 'p256' ? 'P-256' : 'P-384' });
  return { kind, privateKey: pair.privateKey, publicPem: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

/** Signs `data` as cosign does for the key kind (ECDSA/RSA over SHA-256, pure Ed25519). */
export function signBytes(key: SigningKey, data: Buffer): Buffer {
  return sign(key.kind === 'ed25519' ? null : 'sha256', data, key.privateKey);
}

/** cosign's simple-signing payload for `digest` (`critical.identity.docker-reference` = `reference`). */
export function simpleSigningPayload(digest: string, reference = 'registry.test/image'): Buffer {
  return Buffer.from(JSON.stringify({
    critical: { identity: { 'docker-reference': reference }, image: { 'docker-manifest-digest': digest }, type: 'cosign container image signature' },
    optional: null,
  }));
}

/** A manifest with its blobs, ready to push. */
export interface Artifact {
  manifest: Buffer;
  mediaType: string;
  digest: string;
  blobs: Buffer[];
}

/** A descriptor of a pushed manifest, for `subject`. */
export interface Subject {
  digest: string;
  size: number;
  mediaType: string;
}

const EMPTY_CONFIG = Buffer.from('{}');

function manifestOf(layers: Array<{ mediaType: string; bytes: Buffer; annotations?: Record<string, string> }>, opts: { artifactType?: string; subject?: Subject } = {}): Artifact {
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    ...(opts.artifactType ? { artifactType: opts.artifactType } : {}),
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(EMPTY_CONFIG), size: EMPTY_CONFIG.length },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: sha256(l.bytes), size: l.bytes.length, ...(l.annotations ? { annotations: l.annotations } : {}) })),
    ...(opts.subject ? { subject: opts.subject } : {}),
  }));
  return { manifest, mediaType: OCI_MANIFEST, digest: sha256(manifest), blobs: [EMPTY_CONFIG, ...layers.map((l) => l.bytes)] };
}

/** One simple-signing layer: `payload` and its signature (made by `key` unless `signature` is given, base64). */
export interface SignatureLayer {
  payload: Buffer;
  signature: string;
}

/** A simple-signing layer for `digest` signed by `key`. */
export function signatureLayer(key: SigningKey, digest: string): SignatureLayer {
  const payload = simpleSigningPayload(digest);
  return { payload, signature: signBytes(key, payload).toString('base64') };
}

/**
 * cosign's signature manifest holding `layers`: for the tag scheme (push it under {@link signatureTag}), or with
 * `subject` as an OCI 1.1 referrer (`artifactType` application/vnd.dev.cosign.artifact.sig.v1+json).
 */
export function cosignSignatureManifest(layers: SignatureLayer[], subject?: Subject): Artifact {
  return manifestOf(
    layers.map((l) => ({ mediaType: SIMPLE_SIGNING, bytes: l.payload, annotations: { 'dev.cosignproject.cosign/signature': l.signature } })),
    subject ? { artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json', subject } : {},
  );
}

/** `sha256-<hex>.sig`: where cosign's tag scheme keeps the signatures of `digest`. */
export function signatureTag(digest: string): string {
  return `${digest.replace(':', '-')}.sig`;
}

/** A key-signed Sigstore bundle (v0.3) with a DSSE envelope: an in-toto statement naming `digest`, cosign 3's image signature. */
export function dsseBundle(key: SigningKey, digest: string, predicateType = 'https://sigstore.dev/cosign/sign/v1'): unknown {
  const statement = Buffer.from(JSON.stringify({
    _type: 'https://in-toto.io/Statement/v1',
    subject: [{ name: 'registry.test/image', digest: { sha256: digest.replace('sha256:', '') } }],
    predicateType,
    predicate: {},
  }));
  const payloadType = 'application/vnd.in-toto+json';
  // DSSE pre-authentication encoding (DSSE v1 protocol): the bytes the signature is over.
  const pae = Buffer.concat([Buffer.from(`DSSEv1 ${payloadType.length} ${payloadType} ${statement.length} `), statement]);
  const bundle = toDSSEBundle({ artifact: statement, artifactType: payloadType, signature: signBytes(key, pae), keyHint: 'test-key' });
  return bundleToJSON(bundle);
}

/** A key-signed Sigstore bundle with a message signature over `artifact` (e.g. a manifest's own bytes). */
export function messageSignatureBundle(key: SigningKey, artifact: Buffer): unknown {
  const digest = createHash('sha256').update(artifact).digest();
  return bundleToJSON(toMessageSignatureBundle({ digest, signature: signBytes(key, artifact), keyHint: 'test-key' }));
}

/** A Sigstore bundle as an OCI 1.1 referrer of `subject` (as cosign 3 attaches it). */
export function bundleManifest(bundle: unknown, subject: Subject): Artifact {
  return manifestOf([{ mediaType: BUNDLE_V03, bytes: Buffer.from(JSON.stringify(bundle)) }], { artifactType: BUNDLE_V03, subject });
}

/** Puts an artifact into a fake upstream repository, under `tag` when given (always under its digest). */
export function putArtifact(fake: FakeUpstream, repo: string, artifact: Artifact, tag?: string): string {
  for (const b of artifact.blobs) fake.putBlob(repo, b);
  return fake.putManifest(repo, tag, { body: artifact.manifest, contentType: artifact.mediaType });
}

/** Pushes an artifact to a real registry (blobs, then the manifest under `ref`: a tag or its digest). */
export async function pushArtifact(registryUrl: string, repo: string, artifact: Artifact, ref: string = artifact.digest, auth: { creds?: string } = {}): Promise<string> {
  for (const b of artifact.blobs) await pushBlob(registryUrl, repo, { digest: sha256(b), size: b.length, data: b }, auth);
  return pushManifest(registryUrl, repo, ref, artifact.mediaType, artifact.manifest, auth);
}
