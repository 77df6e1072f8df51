/**
 * Manifests through the cache on the embedded stores, against an in-process fake upstream that counts requests:
 * tags fetched on a miss and served from the index, re-checked when stale, moved, served stale when the upstream
 * is down; what is never stored (wrong digests, login pages, schema1). Faults are switches on the fake: no real
 * registry can be made to do them on demand. (Blobs, listings and refused requests: cache.test.ts.)
 */
import { createHash } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;

beforeEach(async () => {
  up = await startFakeUpstream();
  h = await createHarness([{ prefix: 'local', upstream: up.url, ttlSeconds: 3600 }]);
});
afterEach(async () => {
  h.close();
  await up.close();
});


describe('manifests by tag', () => {
  it('fetches a tag on a miss, then serves it byte-exact with 0 upstream requests', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('layer-one')]);
    const first = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(first.status).toBe(200);
    expect(h.bodyOf(first)!.equals(img.body)).toBe(true);
    expect(first.headers['Docker-Content-Digest']).toBe(img.digest);
    expect(first.headers['Content-Type']).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(first.headers['Content-Length']).toBe(String(img.body.length));
    expect(up.count({ kind: 'manifest' })).toBe(1);

    up.reset();
    const second = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(h.bodyOf(second)!.equals(img.body)).toBe(true);
    expect(up.count()).toBe(0);
  });

  it('HEAD answers the same headers as GET, with no body', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const get = await h.request('GET', '/v2/local/app/manifests/v1');
    const head = await h.request('HEAD', '/v2/local/app/manifests/v1');
    expect(head.status).toBe(200);
    expect(head.body).toBeUndefined();
    expect(head.headers).toEqual(get.headers);
    expect(head.headers['Content-Length']).toBe(String(img.body.length));
  });

  it('re-checks a tag older than the TTL with one HEAD and keeps it when the digest did not move', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    await h.request('GET', '/v2/local/app/manifests/v1');
    h.clock.now += 3601 * 1000;
    up.reset();
    const res = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    expect(up.count({ method: 'HEAD', kind: 'manifest' })).toBe(1);
    expect(up.count({ method: 'GET' })).toBe(0);
    // checkedAt moved forward: the next pull within the TTL asks nothing.
    up.reset();
    await h.request('GET', '/v2/local/app/manifests/v1');
    expect(up.count()).toBe(0);
  });

  it('moves a stale tag when the upstream digest changed; the old digest still pulls by digest', async () => {
    const old = seedImage(up, 'app', 'latest', [Buffer.from('old')]);
    await h.request('GET', '/v2/local/app/manifests/latest');
    const now = seedImage(up, 'app', 'latest', [Buffer.from('new')]);
    h.clock.now += 3601 * 1000;
    const res = await h.request('GET', '/v2/local/app/manifests/latest');
    expect(res.headers['Docker-Content-Digest']).toBe(now.digest);
    expect(h.bodyOf(res)!.equals(now.body)).toBe(true);
    up.faults.down = true;
    const byOld = await h.request('GET', `/v2/local/app/manifests/${old.digest}`);
    expect(byOld.status).toBe(200);
    expect(h.bodyOf(byOld)!.equals(old.body)).toBe(true);
  });

  it('serves a stale tag when the upstream is down, and 503 for what is not cached', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    await h.request('GET', '/v2/local/app/manifests/v1');
    h.clock.now += 3601 * 1000;
    up.faults.down = true;
    const res = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(res.status).toBe(200);
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    const miss = await h.request('GET', '/v2/local/app/manifests/v2');
    expect(miss.status).toBe(503);
    expect(h.jsonOf(miss).errors[0].code).toBe('UNAVAILABLE');
  });

  it('answers 429 TOOMANYREQUESTS with the upstream Retry-After when nothing is cached', async () => {
    seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    up.faults.status = { kind: 'manifest', code: 429, retryAfter: '17' };
    const res = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(res.status).toBe(429);
    expect(res.headers['Retry-After']).toBe('17');
    expect(h.jsonOf(res).errors[0].code).toBe('TOOMANYREQUESTS');
  });

  it('stores nothing when the upstream manifest does not match its digest', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    up.faults.wrongBytes = true;
    const byDigest = await h.request('GET', `/v2/local/app/manifests/${img.digest}`);
    expect(byDigest.status).toBe(502);
    expect(h.jsonOf(byDigest).errors[0].code).toBe('DIGEST_INVALID');
    const byTag = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(byTag.status).toBe(502);
    expect(await h.index.getManifest('local/app', img.digest as never)).toBeUndefined();
    expect(await h.index.getTag('local/app', 'v1')).toBeUndefined();
  });

  // The bytes are hashed and compared with the requested digest, whatever Docker-Content-Digest says. The wrong
  // bytes are a valid manifest (another image's), so only that comparison can refuse them.
  it.each([
    ['claims the requested digest', (requested: string) => ({ digestHeader: requested })],
    ['sends no Docker-Content-Digest', () => ({ noDigestHeader: true })],
    ['claims the digest of the bytes it sent', (_: string, sent: Buffer) => ({ digestHeader: sha(sent) })],
  ])('never stores other bytes for a manifest fetched by digest when the upstream %s', async (_, header) => {
    const wanted = seedImage(up, 'app', undefined, [Buffer.from('wanted')]);
    const other = seedImage(up, 'other', undefined, [Buffer.from('other')]);
    up.serveAt('app', wanted.digest, { body: other.body, contentType: other.mediaType, ...header(wanted.digest, other.body) });
    for (let i = 0; i < 2; i++) {
      const res = await h.request('GET', `/v2/local/app/manifests/${wanted.digest}`);
      expect(res.status).toBe(502);
      expect(h.jsonOf(res).errors[0].code).toBe('DIGEST_INVALID');
    }
    expect(up.count({ method: 'GET', kind: 'manifest' })).toBe(2);
    expect(await h.index.getManifest('local/app', wanted.digest as never)).toBeUndefined();
    expect(await h.index.getManifest('local/app', other.digest as never)).toBeUndefined();
  });

  it('falls back to GET and hash when the upstream HEAD gives no Docker-Content-Digest', async () => {
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'0'.repeat(64)}`, size: 1 }, layers: [] }));
    up.putManifest('app', 'v1', { body, noDigestHeader: true });
    await h.request('GET', '/v2/local/app/manifests/v1');
    h.clock.now += 3601 * 1000;
    up.reset();
    const res = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(res.headers['Docker-Content-Digest']).toBe(sha(body));
    expect(res.headers['Content-Type']).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(up.count({ method: 'HEAD' })).toBe(1);
    expect(up.count({ method: 'GET', kind: 'manifest' })).toBe(1);
  });

  it('keeps an image index as the upstream sent it and fetches each child by digest on demand', async () => {
    const amd = seedImage(up, 'multi', undefined, [Buffer.from('amd64 layer')], { arch: 'amd64' });
    const arm = seedImage(up, 'multi', undefined, [Buffer.from('arm64 layer')], { arch: 'arm64' });
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        { mediaType: amd.mediaType, digest: amd.digest, size: amd.body.length, platform: { architecture: 'amd64', os: 'linux' } },
        { mediaType: arm.mediaType, digest: arm.digest, size: arm.body.length, platform: { architecture: 'arm64', os: 'linux' } },
      ],
    }));
    const indexDigest = up.putManifest('multi', 'v1', { body: index, contentType: OCI_INDEX });
    const res = await h.request('GET', '/v2/local/multi/manifests/v1');
    expect(res.headers['Content-Type']).toBe(OCI_INDEX);
    expect(res.headers['Docker-Content-Digest']).toBe(indexDigest);
    expect(h.bodyOf(res)!.equals(index)).toBe(true);
    expect(up.count({ kind: 'manifest' })).toBe(1);

    const child = await h.request('GET', `/v2/local/multi/manifests/${arm.digest}`);
    expect(h.bodyOf(child)!.equals(arm.body)).toBe(true);
    up.reset();
    up.faults.down = true;
    const again = await h.request('GET', `/v2/local/multi/manifests/${indexDigest}`);
    expect(h.bodyOf(again)!.equals(index)).toBe(true);
    expect((await h.request('GET', `/v2/local/multi/manifests/${arm.digest}`)).status).toBe(200);
    expect((await h.request('GET', `/v2/local/multi/manifests/${amd.digest}`)).status).toBe(503);
  });

  it('answers MANIFEST_UNKNOWN when the upstream has no such tag', async () => {
    seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const res = await h.request('GET', '/v2/local/app/manifests/nope');
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('MANIFEST_UNKNOWN');
  });

  it('never stores a login page the upstream serves as a manifest (captive portal): 502, asked again next time', async () => {
    const login = Buffer.from('<html><body>Login</body></html>');
    up.putManifest('app', 'v1', { body: login, contentType: 'application/vnd.oci.image.manifest.v1+json' });
    for (const method of ['GET', 'HEAD']) {
      const res = await h.request(method, '/v2/local/app/manifests/v1');
      expect(res.status).toBe(502);
      if (method === 'GET') expect(h.jsonOf(res).errors[0].code).toBe('MANIFEST_INVALID');
    }
    expect(await h.index.getTag('local/app', 'v1')).toBeUndefined();
    expect(await h.index.getManifest('local/app', sha(login) as never)).toBeUndefined();
    expect(up.count({ method: 'GET', kind: 'manifest' })).toBe(2); // an upstream fault is not remembered as "does not exist"
  });

  it('never stores a manifest whose descriptors are not descriptors: 502 MANIFEST_INVALID naming the field', async () => {
    const good = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const parsed = JSON.parse(good.body.toString()) as { layers: Array<Record<string, unknown>> };
    const bad = Buffer.from(JSON.stringify({ ...parsed, layers: [{ ...parsed.layers[0], size: 'big' }] }));
    up.putManifest('app', 'v2', { body: bad, contentType: 'application/vnd.oci.image.manifest.v1+json' });
    for (const ref of ['v2', sha(bad)]) {
      const res = await h.request('GET', `/v2/local/app/manifests/${ref}`);
      expect(res.status).toBe(502);
      expect(h.jsonOf(res).errors[0]).toMatchObject({ code: 'MANIFEST_INVALID', message: expect.stringContaining('layers[0]: size is not a non-negative integer') });
    }
    expect(await h.index.getTag('local/app', 'v2')).toBeUndefined();
    expect(await h.index.getManifest('local/app', sha(bad) as never)).toBeUndefined();
  });

  it('keeps serving the cached manifest when a stale tag now answers a login page without a digest', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    await h.request('GET', '/v2/local/app/manifests/v1');
    up.putManifest('app', 'v1', { body: Buffer.from('<html><body>Login</body></html>'), contentType: 'application/vnd.oci.image.manifest.v1+json', noDigestHeader: true });
    h.clock.now += 3601 * 1000;
    const res = await h.request('GET', '/v2/local/app/manifests/v1');
    expect(res.status).toBe(200);
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    expect(h.bodyOf(res)!.equals(img.body)).toBe(true);
    const entry = await h.index.getTag('local/app', 'v1');
    expect(entry?.digest).toBe(img.digest);
    expect(entry?.lastCheck).toMatchObject({ result: 'error', error: expect.stringContaining('not') });
  });

  it('refuses Docker schema1 manifests with a clear MANIFEST_INVALID', async () => {
    up.putManifest('old', 'v1', { body: Buffer.from('{"schemaVersion":1,"name":"old","fsLayers":[]}'), contentType: 'application/vnd.docker.distribution.manifest.v1+prettyjws' });
    const res = await h.request('GET', '/v2/local/old/manifests/v1');
    expect(res.status).toBe(400);
    expect(h.jsonOf(res).errors[0]).toMatchObject({ code: 'MANIFEST_INVALID', message: expect.stringContaining('schema1') });
  });
});
