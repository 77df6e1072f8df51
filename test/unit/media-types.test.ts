/**
 * classifyManifest: which upstream answers are stored and served as a manifest, and as which media type. A
 * manifest is served with the type it is classified as, so a wrong answer here is a wrong `Content-Type` to every
 * client for as long as the manifest is cached (or a captive portal's login page stored as an image).
 */
import { describe, expect, it } from 'vitest';
import { classifyManifest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from '../../shared/oci/media-types.js';
import type { RegistryError } from '../../shared/oci/errors.js';

const digest = `sha256:${'a'.repeat(64)}`;
const descriptor = (mediaType: string) => ({ mediaType, digest, size: 1 });
const image = (mediaType?: string) => ({
  schemaVersion: 2,
  ...(mediaType ? { mediaType } : {}),
  config: descriptor('application/vnd.oci.image.config.v1+json'),
  layers: [descriptor('application/vnd.oci.image.layer.v1.tar+gzip')],
});
const index = (mediaType?: string) => ({ schemaVersion: 2, ...(mediaType ? { mediaType } : {}), manifests: [descriptor(OCI_MANIFEST)] });
const json = (v: unknown) => Buffer.from(JSON.stringify(v));

describe('classifyManifest accepts manifests, typed by Content-Type, else by the body', () => {
  it.each([
    ['OCI manifest', OCI_MANIFEST, json(image(OCI_MANIFEST)), OCI_MANIFEST],
    ['OCI manifest without mediaType (optional)', OCI_MANIFEST, json(image()), OCI_MANIFEST],
    ['OCI index', OCI_INDEX, json(index(OCI_INDEX)), OCI_INDEX],
    ['OCI index without mediaType', OCI_INDEX, json(index()), OCI_INDEX],
    ['Docker schema2', DOCKER_MANIFEST, json(image(DOCKER_MANIFEST)), DOCKER_MANIFEST],
    ['Docker manifest list', DOCKER_MANIFEST_LIST, json(index(DOCKER_MANIFEST_LIST)), DOCKER_MANIFEST_LIST],
    ['Content-Type with parameters and capitals', `${OCI_MANIFEST.toUpperCase()}; charset=utf-8`, json(image()), OCI_MANIFEST],
    ['no Content-Type: the body mediaType', undefined, json(image(DOCKER_MANIFEST)), DOCKER_MANIFEST],
    ['no Content-Type, no mediaType, manifests[]: an OCI index', undefined, json(index()), OCI_INDEX],
    ['no Content-Type, no mediaType, config + layers: an OCI manifest', undefined, json(image()), OCI_MANIFEST],
    ['generic application/json: the body decides', 'application/json', json(index(DOCKER_MANIFEST_LIST)), DOCKER_MANIFEST_LIST],
    ['a non-manifest Content-Type is never served as one', 'text/html', json(image(OCI_MANIFEST)), OCI_MANIFEST],
    ['a blob media type is never served as a manifest type', 'application/vnd.oci.image.layer.v1.tar+gzip', json(image()), OCI_MANIFEST],
  ])('%s', (_, contentType, body, expected) => {
    expect(classifyManifest(contentType, body)).toBe(expected);
  });
});

describe('classifyManifest refuses what is not a manifest (MANIFEST_INVALID, nothing stored)', () => {
  it.each([
    ['a login page under a manifest Content-Type', OCI_MANIFEST, Buffer.from('<html><body>Login</body></html>')],
    ['a login page under text/html', 'text/html; charset=utf-8', Buffer.from('<html><body>Login</body></html>')],
    ['an empty body', OCI_MANIFEST, Buffer.alloc(0)],
    ['JSON that is not an object', OCI_MANIFEST, json(['schemaVersion', 2])],
    ['JSON null', OCI_INDEX, json(null)],
    ['no schemaVersion', OCI_MANIFEST, json({ config: descriptor('x'), layers: [] })],
    ['schemaVersion 3', OCI_MANIFEST, json({ ...image(), schemaVersion: 3 })],
    ['schemaVersion "2" (a string)', OCI_MANIFEST, json({ ...image(), schemaVersion: '2' })],
    ['mediaType disagreeing with the Content-Type', OCI_MANIFEST, json(image(DOCKER_MANIFEST))],
    ['an index body under a manifest Content-Type', OCI_MANIFEST, json(index(OCI_INDEX))],
    ['a manifest body under an index Content-Type', OCI_INDEX, json(image())],
    ['an index Content-Type without manifests[]', DOCKER_MANIFEST_LIST, json({ schemaVersion: 2 })],
    ['a manifest Content-Type without config', DOCKER_MANIFEST, json({ schemaVersion: 2, layers: [] })],
    ['a manifest without layers[]', OCI_MANIFEST, json({ schemaVersion: 2, config: descriptor('x') })],
    ['an unsupported mediaType in the body', undefined, json(image('application/vnd.oci.artifact.manifest.v1+json'))],
    ['an error body from the upstream', 'application/json', json({ errors: [{ code: 'UNAUTHORIZED', message: 'login' }] })],
  ])('%s', (_, contentType, body) => {
    expect(() => classifyManifest(contentType, body)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }) as RegistryError);
  });

  const layer = descriptor('application/vnd.oci.image.layer.v1.tar+gzip');
  it.each([
    ['a layer size that is a string', OCI_MANIFEST, { ...image(), layers: [layer, { ...layer, size: 'big' }] }, 'layers[1]: size is not a non-negative integer'],
    ['a layer mediaType that is a number', OCI_MANIFEST, { ...image(), layers: [{ ...layer, mediaType: 7 }] }, 'layers[0]: mediaType is not a non-empty string'],
    ['a config size of 1e300', OCI_MANIFEST, { ...image(), config: { ...descriptor('application/vnd.oci.image.config.v1+json'), size: 1e300 } }, 'config: size is not a non-negative integer'],
    ['a negative layer size', DOCKER_MANIFEST, { ...image(), layers: [{ ...layer, size: -1 }] }, 'layers[0]: size is not a non-negative integer'],
    ['a fractional layer size', OCI_MANIFEST, { ...image(), layers: [{ ...layer, size: 1.5 }] }, 'layers[0]: size is not a non-negative integer'],
    ['a layer digest that is not one', OCI_MANIFEST, { ...image(), layers: [{ ...layer, digest: 'sha256:xyz' }] }, 'layers[0]: digest is not a valid'],
    ['a layer without a digest', OCI_MANIFEST, { ...image(), layers: [{ mediaType: layer.mediaType, size: 1 }] }, 'layers[0]: digest is not a valid'],
    ['a layer that is null', OCI_MANIFEST, { ...image(), layers: [null] }, 'layers[0]: is not an object'],
    ['a config that is an array', OCI_MANIFEST, { ...image(), config: [] }, 'config: is not an object'],
    ['index entries null and 5', OCI_INDEX, { ...index(), manifests: [descriptor(OCI_MANIFEST), null, 5] }, 'manifests[1]: is not an object'],
    ['an index entry with a string size', DOCKER_MANIFEST_LIST, { ...index(), manifests: [{ ...descriptor(DOCKER_MANIFEST), size: '5' }] }, 'manifests[0]: size is not a non-negative integer'],
    ['a subject that is not a descriptor', OCI_MANIFEST, { ...image(), subject: { digest } }, 'subject: mediaType is not a non-empty string'],
    ['annotations that are not strings', OCI_MANIFEST, { ...image(), layers: [{ ...layer, annotations: { a: 1 } }] }, 'layers[0]: annotations is not a map of strings'],
  ])('refuses a manifest whose descriptors are not descriptors, naming the field: %s', (_, contentType, body, field) => {
    expect(() => classifyManifest(contentType, json(body))).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID', status: 502, message: expect.stringContaining(field) }) as RegistryError);
  });

  it('accepts artifact manifests and cosign signatures: any mediaType strings, empty config, annotations, subject', () => {
    const sig = {
      schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest, size: 2 },
      layers: [{ mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', digest, size: 0, annotations: { 'dev.cosignproject.cosign/signature': 'MEUC' } }],
      subject: { mediaType: OCI_INDEX, digest, size: 1234 },
      annotations: { 'org.opencontainers.image.created': '2026-12-07T00:00:00Z' },
    };
    expect(classifyManifest(OCI_MANIFEST, json(sig))).toBe(OCI_MANIFEST);
    expect(classifyManifest(OCI_INDEX, json({ ...index(), manifests: [] }))).toBe(OCI_INDEX);
  });

  it.each([
    ['Content-Type schema1', 'application/vnd.docker.distribution.manifest.v1+prettyjws', json({ schemaVersion: 1, fsLayers: [] })],
    ['body schemaVersion 1 under a generic type', 'application/json', json({ schemaVersion: 1, fsLayers: [] })],
    ['body schemaVersion 1 under a schema2 type', DOCKER_MANIFEST, json({ schemaVersion: 1, fsLayers: [] })],
  ])('refuses Docker schema1 with a message that says so: %s', (_, contentType, body) => {
    expect(() => classifyManifest(contentType, body)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID', status: 400, message: expect.stringContaining('schema1') }) as RegistryError);
  });
});
