/**
 * One name, one upstream (DESIGN.md), for manifests, referrers and tag lists: what the cache serves under a name
 * came from that name's own upstream. Two rules point at two in-process fake upstreams holding different content
 * under the same repository, tag and digest; the blob side is tested in blob-miss-path.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let a: FakeUpstream;
let b: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;

beforeEach(async () => {
  a = await startFakeUpstream({ referrers: true });
  b = await startFakeUpstream({ referrers: true });
  h = await createHarness([
    { prefix: 'pa', upstream: a.url, negativeCacheSeconds: 60 },
    { prefix: 'pb', upstream: b.url, negativeCacheSeconds: 60 },
  ]);
});
afterEach(async () => {
  h.close();
  await a.close();
  await b.close();
});

const digestOf = async (path: string) => (await h.request('GET', path)).headers['Docker-Content-Digest'];

describe('manifests are served under a name only from its own upstream', () => {
  it('a manifest cached by digest for one name is fetched (or refused) for another, never served from the store', async () => {
    const img = seedImage(a, 'app', 'v1', [Buffer.from('only in a')]);
    expect(await digestOf(`/v2/pa/app/manifests/${img.digest}`)).toBe(img.digest);
    for (const other of ['/v2/pa/other', '/v2/pb/app']) {
      const res = await h.request('GET', `${other}/manifests/${img.digest}`);
      expect(res.status).toBe(404);
      expect(h.jsonOf(res).errors[0].code).toBe('MANIFEST_UNKNOWN');
    }
    expect(b.count({ kind: 'manifest' })).toBe(1);
  });

  it('concurrent misses of one digest under two names make one upstream request each, and each gets its own answer', async () => {
    const img = seedImage(a, 'app', undefined, [Buffer.from('in a only')]);
    a.faults.delayMs = 100;
    b.faults.delayMs = 100;
    const [fromA, fromB, fromA2] = await Promise.all([
      h.request('GET', `/v2/pa/app/manifests/${img.digest}`),
      h.request('GET', `/v2/pb/app/manifests/${img.digest}`),
      h.request('GET', `/v2/pa/app/manifests/${img.digest}`),
    ]);
    expect([fromA.status, fromB.status, fromA2.status]).toEqual([200, 404, 200]);
    expect([a.count({ kind: 'manifest' }), b.count({ kind: 'manifest' })]).toEqual([1, 1]);
  });

  it('concurrent fills of one tag under two names each get their own upstream\'s manifest', async () => {
    const inA = seedImage(a, 'app', 'latest', [Buffer.from('a')]);
    const inB = seedImage(b, 'app', 'latest', [Buffer.from('b')]);
    a.faults.delayMs = 100;
    b.faults.delayMs = 100;
    const [fromA, fromB] = await Promise.all([digestOf('/v2/pa/app/manifests/latest'), digestOf('/v2/pb/app/manifests/latest')]);
    expect([fromA, fromB]).toEqual([inA.digest, inB.digest]);
    expect((await h.index.getTag('pa/app', 'latest'))?.digest).toBe(inA.digest);
    expect((await h.index.getTag('pb/app', 'latest'))?.digest).toBe(inB.digest);
  });

  it('"does not exist" remembered for one name does not hide the tag under another', async () => {
    const inB = seedImage(b, 'app', 'v1', [Buffer.from('b')]);
    expect((await h.request('GET', '/v2/pa/app/manifests/v1')).status).toBe(404);
    expect(await digestOf('/v2/pb/app/manifests/v1')).toBe(inB.digest);
    expect((await h.request('GET', `/v2/pa/app/manifests/${inB.digest}`)).status).toBe(404);
    expect(await digestOf(`/v2/pb/app/manifests/${inB.digest}`)).toBe(inB.digest);
  });

  it('a Docker Hub rule never stores under a name another rule serves (library/ rewriting)', async () => {
    // `hub/nginx` becomes `hub/library/nginx`, the very name the `hub/library` rule serves from its own upstream.
    h.close();
    h = await createHarness([
      { prefix: 'hub', upstream: a.url, dockerHubLibrary: true },
      { prefix: 'hub/library', upstream: b.url },
    ]);
    const inA = seedImage(a, 'library/nginx', 'v1', [Buffer.from('hub nginx')]);
    const inB = seedImage(b, 'nginx', 'v1', [Buffer.from('other nginx')]);
    const short = await h.request('GET', '/v2/hub/nginx/manifests/v1');
    expect(short.status).toBe(404);
    expect(h.jsonOf(short).errors[0].code).toBe('NAME_UNKNOWN');
    expect(a.count()).toBe(0);
    expect(await digestOf('/v2/hub/library/nginx/manifests/v1')).toBe(inB.digest);
    expect(inA.digest).not.toBe(inB.digest); // before the fix, hub/nginx stored inA under hub/library/nginx
    // The full Docker Hub path of another repository still works through the `hub` rule.
    const img = seedImage(a, 'team/app', 'v1', [Buffer.from('team')]);
    expect(await digestOf('/v2/hub/team/app/manifests/v1')).toBe(img.digest);
  });
});

describe('referrers and tag lists kept for one name are not served for another', () => {
  it('kept referrers and the kept tag list answer only their own name when the upstreams are down', async () => {
    const img = seedImage(a, 'app', 'v1', [Buffer.from('image')]);
    b.putManifest('app', undefined, { body: img.body, contentType: img.mediaType });
    const sig = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: img.mediaType,
      artifactType: 'application/example',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: img.configDigest, size: img.config.length },
      layers: [],
      subject: { mediaType: img.mediaType, digest: img.digest, size: img.body.length },
    }));
    a.putManifest('app', undefined, { body: sig, contentType: img.mediaType });
    expect(await digestOf('/v2/pa/app/manifests/v1')).toBe(img.digest);
    expect(await digestOf(`/v2/pb/app/manifests/${img.digest}`)).toBe(img.digest);
    expect(h.jsonOf(await h.request('GET', `/v2/pa/app/referrers/${img.digest}`)).manifests).toHaveLength(1);
    expect(h.jsonOf(await h.request('GET', '/v2/pa/app/tags/list')).tags).toEqual(['v1']);
    a.faults.down = true;
    b.faults.down = true;
    expect(h.jsonOf(await h.request('GET', `/v2/pa/app/referrers/${img.digest}`)).manifests).toHaveLength(1);
    expect((await h.request('GET', `/v2/pb/app/referrers/${img.digest}`)).status).toBe(503);
    expect(h.jsonOf(await h.request('GET', '/v2/pa/app/tags/list')).tags).toEqual(['v1']);
    expect((await h.request('GET', '/v2/pb/app/tags/list')).status).toBe(503);
  });
});
