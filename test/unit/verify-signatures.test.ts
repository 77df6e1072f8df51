/**
 * The signature checks of shared/verify/: keys, cosign simple signing, Sigstore bundles, and finding signatures at
 * an upstream (tag scheme and referrers), with keys generated here and signatures made as cosign makes them.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../shared/config.js';
import type { Digest } from '../../shared/oci/digest.js';
import { createUpstreamClient } from '../../shared/upstream/client.js';
import { isSignatureArtifact } from '../../shared/verify/cosign-formats.js';
import { keySetId, parseTrustedKey } from '../../shared/verify/keys.js';
import { checkSignatures } from '../../shared/verify/signatures.js';
import { checkSimpleSigning } from '../../shared/verify/simple-signing.js';
import { checkBundle } from '../../shared/verify/sigstore-bundle.js';
import {
  bundleManifest, cosignSignatureManifest, dsseBundle, generateSigningKey, messageSignatureBundle, putArtifact, signBytes, signatureLayer,
  signatureTag, simpleSigningPayload,
} from '../support/cosign-signatures.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const A = `sha256:${'a'.repeat(64)}` as Digest;
const B = `sha256:${'b'.repeat(64)}` as Digest;

describe('policy keys', () => {
  it('parses the key kinds cosign signs with and gives each a stable id', () => {
    for (const kind of ['p256', 'p384', 'ed25519', 'rsa'] as const) {
      const pem = generateSigningKey(kind).publicPem;
      const key = parseTrustedKey(pem);
      expect(key.kind).toBe({ p256: 'ecdsa-p256', p384: 'ecdsa-p384', ed25519: 'ed25519', rsa: 'rsa' }[kind]);
      expect(key.id).toMatch(/^sha256:[0-9a-f]{16}$/);
      expect(parseTrustedKey(pem).id).toBe(key.id);
    }
  });

  it('refuses private keys, short RSA keys, other curves and non-keys, saying why', () => {
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    expect(() => parseTrustedKey(ec.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString())).toThrow(/private key/);
    const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(() => parseTrustedKey(rsa1024)).toThrow(/RSA of 1024 bits/);
    const k1 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
    expect(() => parseTrustedKey(k1)).toThrow(/unsupported key type ec on secp256k1/);
    expect(() => parseTrustedKey('-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n')).toThrow(/not a PEM public key/);
  });

  it('a key set has one id whatever the order, another when a key changes', () => {
    const [k1, k2, k3] = ['p256', 'ed25519', 'p256'].map((k) => parseTrustedKey(generateSigningKey(k as 'p256').publicPem));
    expect(keySetId([k1, k2])).toBe(keySetId([k2, k1]));
    expect(keySetId([k1, k3])).not.toBe(keySetId([k1, k2]));
    expect(keySetId([k1])).not.toBe(keySetId([k1, k2]));
  });
});

describe('cosign simple signing', () => {
  const signer = generateSigningKey('p256');
  const trusted = [parseTrustedKey(signer.publicPem)];

  it('verifies a payload naming the digest, signed by a trusted key of each kind', () => {
    for (const kind of ['p256', 'p384', 'ed25519', 'rsa'] as const) {
      const key = generateSigningKey(kind);
      const { payload, signature } = signatureLayer(key, A);
      const keys = [parseTrustedKey(generateSigningKey('p256').publicPem), parseTrustedKey(key.publicPem)];
      expect(checkSimpleSigning(payload, signature, A, keys)).toEqual({ kind: 'verified', keyId: keys[1].id });
    }
  });

  it('another signer is an unknown key', () => {
    const { payload, signature } = signatureLayer(generateSigningKey('p256'), A);
    expect(checkSimpleSigning(payload, signature, A, trusted)).toEqual({ kind: 'unknown-key' });
  });

  it('a payload altered after signing verifies with no key', () => {
    const { payload, signature } = signatureLayer(signer, A);
    const tampered = Buffer.from(payload.toString().replace(A, B));
    expect(checkSimpleSigning(tampered, signature, B, trusted)).toEqual({ kind: 'unknown-key' });
  });

  it("a trusted signature of image A replayed onto image B is a digest mismatch naming A", () => {
    const { payload, signature } = signatureLayer(signer, A);
    expect(checkSimpleSigning(payload, signature, B, trusted)).toEqual({ kind: 'digest-mismatch', keyId: trusted[0].id, named: A });
  });

  it('a trusted signature of something that is no image signature does not count', () => {
    const payload = Buffer.from(JSON.stringify({ critical: { image: { 'docker-manifest-digest': A }, type: 'atomic container signature' } }));
    expect(checkSimpleSigning(payload, signBytes(signer, payload).toString('base64'), A, trusted).kind).toBe('digest-mismatch');
  });

  it("reads the digest key case-insensitively, as cosign's decoder does, but not two spellings of it", () => {
    const one = Buffer.from(JSON.stringify({ critical: { image: { 'Docker-manifest-digest': A }, type: 'cosign container image signature' } }));
    expect(checkSimpleSigning(one, signBytes(signer, one).toString('base64'), A, trusted).kind).toBe('verified');
    const two = Buffer.from(JSON.stringify({ critical: { image: { 'Docker-manifest-digest': A, 'docker-manifest-digest': B }, type: 'cosign container image signature' } }));
    expect(checkSimpleSigning(two, signBytes(signer, two).toString('base64'), A, trusted).kind).toBe('digest-mismatch');
  });
});

describe('Sigstore bundles', () => {
  const signer = generateSigningKey('p256');
  const trusted = [parseTrustedKey(signer.publicPem)];
  const manifest = Buffer.from('{"schemaVersion":2}');
  const manifestDigest = `sha256:${createHash('sha256').update(manifest).digest('hex')}` as Digest;

  it('verifies a DSSE in-toto statement naming the digest (cosign 3), refuses other keys and other digests', () => {
    expect(checkBundle(dsseBundle(signer, A), A, manifest, trusted)).toEqual({ kind: 'verified', keyId: trusted[0].id });
    expect(checkBundle(dsseBundle(generateSigningKey('p256'), A), A, manifest, trusted)).toEqual({ kind: 'unknown-key' });
    expect(checkBundle(dsseBundle(signer, A), B, manifest, trusted)).toEqual({ kind: 'digest-mismatch', keyId: trusted[0].id, named: A });
    // An attestation (another predicate) about the image is not its signature.
    expect(checkBundle(dsseBundle(signer, A, 'https://slsa.dev/provenance/v1'), A, manifest, trusted).kind).toBe('digest-mismatch');
  });

  it('a tampered DSSE payload verifies with no key', () => {
    const bundle = dsseBundle(signer, A) as { dsseEnvelope: { payload: string } };
    const statement = Buffer.from(bundle.dsseEnvelope.payload, 'base64').toString().replace('a'.repeat(64), 'b'.repeat(64));
    bundle.dsseEnvelope.payload = Buffer.from(statement).toString('base64');
    expect(checkBundle(bundle, B, manifest, trusted)).toEqual({ kind: 'unknown-key' });
  });

  it('verifies a message signature over the manifest bytes themselves, not over other bytes', () => {
    expect(checkBundle(messageSignatureBundle(signer, manifest), manifestDigest, manifest, trusted)).toEqual({ kind: 'verified', keyId: trusted[0].id });
    expect(checkBundle(messageSignatureBundle(signer, Buffer.from('other')), manifestDigest, manifest, trusted)).toEqual({ kind: 'unknown-key' });
  });

  it('a bundle that does not validate, or a keyless one, counts as an unknown key', () => {
    expect(checkBundle({ mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json' }, A, manifest, trusted)).toEqual({ kind: 'unknown-key' });
    const keyless = dsseBundle(signer, A) as { verificationMaterial: Record<string, unknown> };
    keyless.verificationMaterial = { certificate: { rawBytes: Buffer.from('not a cert').toString('base64') }, tlogEntries: [] };
    expect(checkBundle(keyless, A, manifest, trusted)).toEqual({ kind: 'unknown-key' });
  });
});

describe('finding signatures at the upstream', () => {
  let fake: FakeUpstream;
  const signer = generateSigningKey('p256');
  const trusted = [parseTrustedKey(signer.publicPem)];
  const repo = 'org/app';
  let client: ReturnType<typeof createUpstreamClient>;

  beforeAll(async () => {
    fake = await startFakeUpstream({ referrers: true });
    client = createUpstreamClient(parseConfig({ rules: [{ prefix: 'up', upstream: fake.url }] }).rules[0]);
  });
  afterAll(() => fake.close());
  beforeEach(() => fake.reset());

  const image = (layer: string) => {
    const img = seedImage(fake, repo, undefined, [Buffer.from(layer)]);
    return { digest: img.digest as Digest, body: img.body, subject: { digest: img.digest, size: img.body.length, mediaType: img.mediaType } };
  };

  it("finds cosign's tag-scheme signature: one referrers request, one .sig manifest, one payload blob", async () => {
    const img = image('tag-scheme');
    putArtifact(fake, repo, cosignSignatureManifest([signatureLayer(signer, img.digest)]), signatureTag(img.digest));
    fake.reset();
    expect(await checkSignatures(client, repo, img, trusted)).toEqual({ verified: true, keyId: trusted[0].id, via: 'tag' });
    expect([fake.count({ kind: 'referrers' }), fake.count({ kind: 'manifest' }), fake.count({ kind: 'blob' })]).toEqual([1, 1, 1]);
  });

  it('finds an OCI 1.1 cosign signature and a Sigstore bundle among the referrers', async () => {
    const one = image('referrer-sig');
    putArtifact(fake, repo, cosignSignatureManifest([signatureLayer(signer, one.digest)], one.subject));
    expect(await checkSignatures(client, repo, one, trusted)).toEqual({ verified: true, keyId: trusted[0].id, via: 'referrers' });
    const two = image('referrer-bundle');
    putArtifact(fake, repo, bundleManifest(dsseBundle(signer, two.digest), two.subject));
    expect(await checkSignatures(client, repo, two, trusted)).toEqual({ verified: true, keyId: trusted[0].id, via: 'referrers' });
  });

  it('an unsigned image costs two requests and is unsigned; other signers and replays say so', async () => {
    const img = image('unsigned');
    fake.reset();
    expect(await checkSignatures(client, repo, img, trusted)).toEqual({ verified: false, reason: 'unsigned', found: 0 });
    expect(fake.requests.filter((r) => r.kind !== 'token' && r.kind !== 'base').length).toBe(2);

    const other = image('other-signer');
    putArtifact(fake, repo, cosignSignatureManifest([signatureLayer(generateSigningKey(), other.digest)]), signatureTag(other.digest));
    expect(await checkSignatures(client, repo, other, trusted)).toEqual({ verified: false, reason: 'unknown-key', found: 1 });

    const replayed = image('replayed');
    putArtifact(fake, repo, cosignSignatureManifest([signatureLayer(signer, other.digest)]), signatureTag(replayed.digest));
    expect(await checkSignatures(client, repo, replayed, trusted)).toEqual({ verified: false, reason: 'digest-mismatch', found: 1 });
  });

  it('a second, good signature after a bad one verifies; payloads served with other bytes, or missing, verify nothing', async () => {
    const img = image('two-sigs');
    putArtifact(fake, repo, cosignSignatureManifest([signatureLayer(generateSigningKey(), img.digest), signatureLayer(signer, img.digest)]), signatureTag(img.digest));
    expect(await checkSignatures(client, repo, img, trusted)).toMatchObject({ verified: true, via: 'tag' });
    fake.faults.wrongBytes = 'blobs';
    try {
      expect(await checkSignatures(client, repo, img, trusted)).toEqual({ verified: false, reason: 'unknown-key', found: 2 });
    } finally {
      fake.faults.wrongBytes = undefined;
    }
    fake.faults.status = { kind: 'blob', code: 404 };
    try {
      expect(await checkSignatures(client, repo, img, trusted)).toEqual({ verified: false, reason: 'unknown-key', found: 2 });
    } finally {
      fake.faults.status = undefined;
    }
  });

  it('an upstream that cannot answer is an error, not "unsigned"', async () => {
    const img = image('outage');
    fake.faults.status = { kind: 'referrers', code: 503 };
    try {
      await expect(checkSignatures(client, repo, img, trusted)).rejects.toMatchObject({ name: 'UpstreamError', failure: 'unavailable' });
    } finally {
      fake.faults.status = undefined;
    }
  });

  it('tells signature manifests (pullable under a policy) from images', () => {
    const sig = cosignSignatureManifest([signatureLayer(signer, A)]);
    expect(isSignatureArtifact(sig.manifest)).toBe(true);
    expect(isSignatureArtifact(bundleManifest(dsseBundle(signer, A), { digest: A, size: 1, mediaType: 'x' }).manifest)).toBe(true);
    expect(isSignatureArtifact(image('not-a-signature').body)).toBe(false);
    expect(isSignatureArtifact(Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [] })))).toBe(false);
    expect(isSignatureArtifact(Buffer.from(simpleSigningPayload(A)))).toBe(false);
  });
});
