/**
 * Tag lists and referrers through the cache: the upstream's answer when it is reachable, kept for offline use.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  h?.close();
  await up?.close();
});

/** Pushes an artifact manifest (cosign/SBOM-style) whose subject is `subject`. */
function pushArtifact(repo: string, subject: { digest: string; size: number }, artifactType: string, payload: string) {
  const blob = Buffer.from(payload);
  const blobDigest = up.putBlob(repo, blob);
  const empty = Buffer.from('{}');
  const emptyDigest = up.putBlob(repo, empty);
  const body = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType,
    config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: emptyDigest, size: 2 },
    layers: [{ mediaType: 'application/octet-stream', digest: blobDigest, size: blob.length }],
    subject: { mediaType: OCI_MANIFEST, ...subject },
  }));
  return up.putManifest(repo, undefined, { body, contentType: OCI_MANIFEST });
}

describe('tags/list', () => {
  it('serves the last full list seen, paginated, when the upstream goes down', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    for (const t of ['a', 'b', 'c']) seedImage(up, 'app', t, [Buffer.from(t)]);
    const online = await h.request('GET', '/v2/p/app/tags/list');
    expect(h.jsonOf(online).tags).toEqual(['a', 'b', 'c']);
    // Paginated requests are answered but not kept (one kept list per repository).
    expect(h.jsonOf(await h.request('GET', '/v2/p/app/tags/list?n=1&last=a')).tags).toEqual(['b']);
    up.faults.down = true;
    const offline = await h.request('GET', '/v2/p/app/tags/list?n=2');
    expect(offline.status).toBe(200);
    expect(h.jsonOf(offline).tags).toEqual(['a', 'b']);
    expect(offline.headers.Link).toBe('</v2/p/app/tags/list?n=2&last=b>; rel="next"');
    // Nothing seen and nothing cached for this repository → 503, not an empty list.
    const unknown = await h.request('GET', '/v2/p/other/tags/list');
    expect(unknown.status).toBe(503);
  });
});

describe('referrers', () => {
  it('passes the upstream referrers on, filters by artifactType, and keeps them for an outage', async () => {
    up = await startFakeUpstream({ referrers: true });
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const img = seedImage(up, 'app', 'v1', [Buffer.from('image')]);
    const sig = pushArtifact('app', { digest: img.digest, size: img.body.length }, 'application/vnd.dev.cosign.artifact.sig.v1+json', 'sig');
    const sbom = pushArtifact('app', { digest: img.digest, size: img.body.length }, 'application/spdx+json', '{"spdx":1}');
    // Referrers are kept for subjects the repository has cached.
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(200);

    const all = await h.request('GET', `/v2/p/app/referrers/${img.digest}`);
    expect(all.status).toBe(200);
    expect(all.headers['Content-Type']).toBe('application/vnd.oci.image.index.v1+json');
    expect(all.headers['OCI-Filters-Applied']).toBeUndefined();
    expect(h.jsonOf(all).manifests.map((m: { digest: string }) => m.digest).sort()).toEqual([sig, sbom].sort());

    const onlySbom = await h.request('GET', `/v2/p/app/referrers/${img.digest}?artifactType=application/spdx%2Bjson`);
    expect(onlySbom.headers['OCI-Filters-Applied']).toBe('artifactType');
    expect(h.jsonOf(onlySbom).manifests.map((m: { digest: string }) => m.digest)).toEqual([sbom]);

    up.faults.down = true;
    const offline = await h.request('GET', `/v2/p/app/referrers/${img.digest}?artifactType=application/vnd.dev.cosign.artifact.sig.v1%2Bjson`);
    expect(offline.status).toBe(200);
    expect(h.jsonOf(offline).manifests.map((m: { digest: string }) => m.digest)).toEqual([sig]);
    // The artifacts themselves are ordinary manifests: pullable by digest, byte-exact, once fetched.
    up.faults.down = false;
    const art = await h.request('GET', `/v2/p/app/manifests/${sbom}`);
    expect(art.headers['Docker-Content-Digest']).toBe(sbom);
    expect(art.headers['Content-Type']).toBe(OCI_MANIFEST);
  });

  it('answers 404 when the upstream has no referrers API, so clients fall back to the tag schema', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const img = seedImage(up, 'app', 'v1', [Buffer.from('image')]);
    const res = await h.request('GET', `/v2/p/app/referrers/${img.digest}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('MANIFEST_UNKNOWN');
    // Cosign's tag schema: sha256-<hex>.sig is an ordinary tag.
    const sigTag = `sha256-${img.digest.slice(7)}.sig`;
    const sig = seedImage(up, 'app', sigTag, [Buffer.from('signature')]);
    const tagged = await h.request('GET', `/v2/p/app/manifests/${sigTag}`);
    expect(tagged.headers['Docker-Content-Digest']).toBe(sig.digest);
  });
});

describe('_catalog', () => {
  it('lists only repositories a configured rule still serves, paginated', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    for (const r of ['a', 'b', 'c']) seedImage(up, r, 'v1', [Buffer.from(r)]);
    for (const r of ['a', 'b', 'c']) expect((await h.request('GET', `/v2/p/${r}/manifests/v1`)).status).toBe(200);
    // Rows left by a rule that was removed from the config.
    await h.index.putTag({ name: 'gone/x', tag: 'v1', digest: `sha256:${'0'.repeat(64)}`, mediaType: OCI_MANIFEST, size: 1, fetchedAt: 0, checkedAt: 0 });
    await h.index.putTag({ name: 'p/b2', tag: 'v1', digest: `sha256:${'0'.repeat(64)}`, mediaType: OCI_MANIFEST, size: 1, fetchedAt: 0, checkedAt: 0 });
    expect(h.jsonOf(await h.request('GET', '/v2/_catalog')).repositories).toEqual(['p/a', 'p/b', 'p/b2', 'p/c']);
    const page = await h.request('GET', '/v2/_catalog?n=2');
    expect(h.jsonOf(page).repositories).toEqual(['p/a', 'p/b']);
    expect(page.headers.Link).toBe('</v2/_catalog?n=2&last=p%2Fb>; rel="next"');
    expect(h.jsonOf(await h.request('GET', '/v2/_catalog?n=2&last=p%2Fb')).repositories).toEqual(['p/b2', 'p/c']);
  });
});
