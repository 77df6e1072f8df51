/**
 * Cache behaviour of the registry app on the embedded stores, against an in-process fake upstream that counts
 * requests: blobs, listings and the requests the cache refuses. Faults (upstream down, wrong bytes) are switches on
 * the fake: no real registry can be made to do them on demand. (Manifests by tag: cache-manifests.test.ts.)
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

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


describe('blobs', () => {
  it('fills a blob on a miss, verifies it, and answers 307 to a signed URL serving the exact bytes', async () => {
    const layer = Buffer.from('real layer bytes '.repeat(1000));
    const img = seedImage(up, 'app', 'v1', [layer]);
    await h.request('GET', '/v2/local/app/manifests/v1');
    const res = await h.request('GET', `/v2/local/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(res.headers['Docker-Content-Digest']).toBe(img.layerDigests[0]);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
    up.reset();
    const head = await h.request('HEAD', `/v2/local/app/blobs/${img.layerDigests[0]}`);
    expect(head.status).toBe(200);
    expect(head.headers['Content-Length']).toBe(String(layer.length));
    expect(up.count()).toBe(0);
  });

  it('stores nothing when the upstream blob does not hash to its digest', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('good bytes')]);
    up.faults.wrongBytes = true;
    const res = await h.request('GET', `/v2/local/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(502);
    expect(h.jsonOf(res).errors[0].code).toBe('DIGEST_INVALID');
    expect(readdirSync(join(h.dir, 'blobs', 'sha256'))).toEqual([]);
    expect(readdirSync(join(h.dir, 'tmp'))).toEqual([]);
  });

  it('makes one upstream download for concurrent misses of the same blob', async () => {
    const layer = Buffer.alloc(2 * 1024 * 1024, 7);
    const img = seedImage(up, 'app', 'v1', [layer]);
    up.faults.delayMs = 50;
    const results = await Promise.all(Array.from({ length: 8 }, () => h.request('GET', `/v2/local/app/blobs/${img.layerDigests[0]}`)));
    expect(results.map((r) => r.status)).toEqual(Array(8).fill(307));
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('serves a blob stored for another repository only after the upstream confirms this repository has it', async () => {
    const shared = Buffer.from('shared base layer');
    const a = seedImage(up, 'a', 'v1', [shared]);
    await h.request('GET', `/v2/local/a/blobs/${a.layerDigests[0]}`);
    up.reset();
    const other = await h.request('GET', `/v2/local/b/blobs/${a.layerDigests[0]}`);
    expect(other.status).toBe(404);
    expect(h.jsonOf(other).errors[0].code).toBe('BLOB_UNKNOWN');
    up.putBlob('b', shared);
    up.reset();
    const linked = await h.request('GET', `/v2/local/b/blobs/${a.layerDigests[0]}`);
    expect(linked.status).toBe(307);
    expect(up.count({ method: 'HEAD', kind: 'blob' })).toBe(1);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(0);
  });

  it('never serves a manifest digest on the blobs route', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    await h.request('GET', '/v2/local/app/manifests/v1');
    const res = await h.request('GET', `/v2/local/app/blobs/${img.digest}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
  });

  it('answers BLOB_UNKNOWN for a blob the upstream does not have', async () => {
    const res = await h.request('GET', `/v2/local/app/blobs/sha256:${'1'.repeat(64)}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
  });
});

describe('listing', () => {
  it('lists the upstream tags with pagination kept usable through the cache', async () => {
    for (const t of ['c', 'a', 'b', 'd']) seedImage(up, 'app', t, [Buffer.from(t)]);
    const page1 = await h.request('GET', '/v2/local/app/tags/list?n=2');
    expect(h.jsonOf(page1)).toEqual({ name: 'local/app', tags: ['a', 'b'] });
    expect(page1.headers.Link).toBe('</v2/local/app/tags/list?n=2&last=b>; rel="next"');
    const page2 = await h.request('GET', '/v2/local/app/tags/list?n=2&last=b');
    expect(h.jsonOf(page2).tags).toEqual(['c', 'd']);
    expect(page2.headers.Link).toBeUndefined();
    const none = await h.request('GET', '/v2/local/app/tags/list?n=0');
    expect(h.jsonOf(none).tags).toEqual([]);
    expect(none.headers.Link).toBeUndefined();
  });

  it('lists the cached tags when the upstream is down, and the catalog of cached repositories', async () => {
    seedImage(up, 'app', 'v2', [Buffer.from('2')]);
    seedImage(up, 'app', 'v1', [Buffer.from('1')]);
    seedImage(up, 'other', 'x', [Buffer.from('1')]);
    await h.request('GET', '/v2/local/app/manifests/v2');
    await h.request('GET', '/v2/local/app/manifests/v1');
    await h.request('GET', '/v2/local/other/manifests/x');
    up.faults.down = true;
    expect(h.jsonOf(await h.request('GET', '/v2/local/app/tags/list')).tags).toEqual(['v1', 'v2']);
    expect(h.jsonOf(await h.request('GET', '/v2/_catalog')).repositories).toEqual(['local/app', 'local/other']);
    const page = await h.request('GET', '/v2/_catalog?n=1');
    expect(h.jsonOf(page).repositories).toEqual(['local/app']);
    expect(page.headers.Link).toBe('</v2/_catalog?n=1&last=local%2Fapp>; rel="next"');
  });
});

describe('requests the cache refuses', () => {
  it.each([
    ['PUT', '/v2/local/app/manifests/v1', 405, 'UNSUPPORTED'],
    ['DELETE', '/v2/local/app/manifests/v1', 405, 'UNSUPPORTED'],
    ['POST', '/v2/local/app/blobs/uploads/', 405, 'UNSUPPORTED'],
    ['PATCH', '/v2/local/app/blobs/uploads/abc', 405, 'UNSUPPORTED'],
    ['GET', '/v2/unknown/app/manifests/v1', 404, 'NAME_UNKNOWN'],
    ['GET', '/v2/local/App/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/a%2Fb/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/../x/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/app/manifests/sha256:zz', 400, 'DIGEST_INVALID'],
    // A tag that breaks the grammar cannot exist: unknown (404), as distribution answers (conformance suite).
    ['GET', `/v2/local/app/manifests/${'t'.repeat(129)}`, 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/local/app/manifests/.INVALID_MANIFEST_NAME', 404, 'MANIFEST_UNKNOWN'],
    ['HEAD', '/v2/local/app/manifests/.INVALID_MANIFEST_NAME', 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/local/app/blobs/latest', 400, 'DIGEST_INVALID'],
  ])('%s %s → %i %s, without asking the upstream', async (method, path, status, code) => {
    const res = await h.request(method, path);
    expect(res.status).toBe(status);
    if (method === 'HEAD') expect(res.body).toBeUndefined();
    else expect(h.jsonOf(res).errors[0].code).toBe(code);
    expect(up.count()).toBe(0);
  });
});
