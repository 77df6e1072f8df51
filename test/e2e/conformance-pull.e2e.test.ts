/**
 * The OCI distribution-spec conformance suite's pull workflow, checked here with plain HTTP against the real
 * local server in front of Debian's docker-registry (the Go conformance binary is not available offline; these
 * are its pull-workflow assertions): 404 for unknown blobs and manifests (GET and HEAD), 200 with a matching
 * Docker-Content-Digest for known ones by tag and by digest, 404 MANIFEST_UNKNOWN for a reference that is no tag
 * (`.INVALID_MANIFEST_NAME`), 400/404 with OCI error JSON for a malformed digest; and the content-discovery MUSTs of
 * `tags/list` (lexical order, `n`, `last`, `Link`, `n=0`), which the cache keeps although distribution 2.8 ignores
 * `n` and `last`.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushManifest, pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const OCI_CODES = ['BLOB_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'NAME_INVALID', 'NAME_UNKNOWN', 'UNSUPPORTED'];

let upstream: UpstreamRegistry;
let cache: LocalServer;
let image: PushedImage;
const name = 'local/conformance/pull';
const EXTRA_TAGS = ['tagtest1', 'Latest', 'tagtest2', '1.0', 'tagtest3'];
/** Every tag of the upstream repository in byte order (distribution's sort.Strings). */
const ALL_TAGS = ['tagtest0', ...EXTRA_TAGS].sort();

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  image = await pushSinglePlatformImage(upstream.url, 'conformance/pull', 'tagtest0', {
    format: 'oci',
    arch: 'amd64',
    layerSources: ['/usr/share/common-licenses'],
  });
  // More tags for the listing checks (distribution 2.8 ignores n and last: the cache must page itself).
  for (const t of EXTRA_TAGS) await pushManifest(upstream.url, 'conformance/pull', t, image.mediaType, image.manifest);
  cache = await startLocalServer({ rules: [{ prefix: 'local', upstream: upstream.url }] });
});
afterAll(async () => {
  await cache?.stop();
  await upstream?.stop();
});

async function expectOciError(res: Response, statuses: number[]) {
  expect(statuses).toContain(res.status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body = (await res.json()) as { errors: Array<{ code: string; message: string }> };
  expect(body.errors.length).toBeGreaterThan(0);
  for (const e of body.errors) expect(OCI_CODES).toContain(e.code);
}

describe('pull workflow (OCI distribution-spec conformance, pull)', () => {
  it('GET /v2/ → 200', async () => {
    expect((await fetch(`${cache.url}/v2/`)).status).toBe(200);
  });

  it('HEAD and GET a manifest by tag and by digest → 200 with the matching Docker-Content-Digest', async () => {
    for (const ref of ['tagtest0', image.digest]) {
      const head = await fetch(`${cache.url}/v2/${name}/manifests/${ref}`, { method: 'HEAD', headers: { Accept: image.mediaType } });
      expect(head.status).toBe(200);
      expect(head.headers.get('docker-content-digest')).toBe(image.digest);
      expect(head.headers.get('content-length')).toBe(String(image.manifest.length));
      const get = await fetch(`${cache.url}/v2/${name}/manifests/${ref}`, { headers: { Accept: image.mediaType } });
      expect(get.status).toBe(200);
      expect(get.headers.get('docker-content-digest')).toBe(image.digest);
      expect(get.headers.get('content-type')).toBe(image.mediaType);
      expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(image.digest);
    }
  });

  it('HEAD and GET every blob → 200 with its bytes (through the redirect)', async () => {
    for (const blob of image.blobs) {
      const head = await fetch(`${cache.url}/v2/${name}/blobs/${blob.digest}`, { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.headers.get('content-length')).toBe(String(blob.size));
      expect(head.headers.get('docker-content-digest')).toBe(blob.digest);
      const get = await fetch(`${cache.url}/v2/${name}/blobs/${blob.digest}`);
      expect(get.status).toBe(200);
      expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(blob.digest);
    }
  });

  it('unknown manifests and blobs → 404 (GET with OCI error JSON, HEAD without a body)', async () => {
    const unknownDigest = `sha256:${'a'.repeat(64)}`;
    await expectOciError(await fetch(`${cache.url}/v2/${name}/manifests/nonexistent`), [404]);
    expect((await fetch(`${cache.url}/v2/${name}/manifests/nonexistent`, { method: 'HEAD' })).status).toBe(404);
    await expectOciError(await fetch(`${cache.url}/v2/${name}/manifests/${unknownDigest}`), [404]);
    expect((await fetch(`${cache.url}/v2/${name}/manifests/${unknownDigest}`, { method: 'HEAD' })).status).toBe(404);
    await expectOciError(await fetch(`${cache.url}/v2/${name}/blobs/${unknownDigest}`), [404]);
    expect((await fetch(`${cache.url}/v2/${name}/blobs/${unknownDigest}`, { method: 'HEAD' })).status).toBe(404);
  });

  it('a reference that is no tag (the suite\'s .INVALID_MANIFEST_NAME) → 404 MANIFEST_UNKNOWN, GET and HEAD', async () => {
    for (const bad of ['.INVALID_MANIFEST_NAME', 'v1@x', 't'.repeat(129)]) {
      const get = await fetch(`${cache.url}/v2/${name}/manifests/${bad}`);
      expect(get.status).toBe(404);
      expect(((await get.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('MANIFEST_UNKNOWN');
      const head = await fetch(`${cache.url}/v2/${name}/manifests/${bad}`, { method: 'HEAD' });
      expect(head.status).toBe(404);
      expect(await head.text()).toBe('');
    }
  });

  it('a malformed digest → 400 or 404 with OCI error JSON', async () => {
    for (const bad of ['sha256:totallywrong', 'sha256:', `sha256:${'A'.repeat(64)}`]) {
      await expectOciError(await fetch(`${cache.url}/v2/${name}/blobs/${bad}`), [400, 404]);
      await expectOciError(await fetch(`${cache.url}/v2/${name}/manifests/${bad}`), [400, 404]);
    }
  });

  it('tags/list → every tag in lexical order; n and last page it with a Link, n=0 is empty without one', async () => {
    const list = async (query: string) => {
      const res = await fetch(`${cache.url}/v2/${name}/tags/list${query}`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { name: string; tags: string[] };
      expect(body.name).toBe(name);
      return { tags: body.tags, link: res.headers.get('link') };
    };
    expect(await list('')).toEqual({ tags: ALL_TAGS, link: null });
    // Follow the Link headers with n=4: full pages of exactly n until the last, together the whole list.
    const pages: string[][] = [];
    let query: string | undefined = '?n=4';
    for (let i = 0; query !== undefined && i < 5; i++) {
      const page = await list(query);
      pages.push(page.tags);
      query = page.link === null ? undefined : /^<[^?]*(\?[^>]*)>; rel="next"$/.exec(page.link)![1];
    }
    expect(pages).toEqual([ALL_TAGS.slice(0, 4), ALL_TAGS.slice(4)]);
    // last is non-inclusive, with or without n.
    expect((await list(`?n=2&last=${ALL_TAGS[1]}`)).tags).toEqual(ALL_TAGS.slice(2, 4));
    expect((await list(`?last=${ALL_TAGS[3]}`)).tags).toEqual(ALL_TAGS.slice(4));
    expect(await list('?n=0')).toEqual({ tags: [], link: null });
  });
});
