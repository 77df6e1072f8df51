/**
 * Tag lists and referrers through the cache: the upstream's answer when it is reachable; offline, the tags cached
 * now (tags/list) and the referrers kept for a cached subject.
 */
import Database from 'better-sqlite3';
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
  it('serves the tags cached now, paginated, when the upstream goes down: not a purged one, nor one never pulled', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    for (const t of ['a', 'b', 'c', 'd']) seedImage(up, 'app', t, [Buffer.from(t)]);
    const online = await h.request('GET', '/v2/p/app/tags/list');
    expect(h.jsonOf(online).tags).toEqual(['a', 'b', 'c', 'd']);
    for (const t of ['a', 'c', 'd']) expect((await h.request('GET', `/v2/p/app/manifests/${t}`)).status).toBe(200);
    await h.lifecycle.purge('p/app:c');
    up.faults.down = true;
    // b was never pulled (the cache could not serve it now), c was purged: neither is listed.
    const offline = await h.request('GET', '/v2/p/app/tags/list');
    expect(offline.status).toBe(200);
    expect(h.jsonOf(offline).tags).toEqual(['a', 'd']);
    const page = await h.request('GET', '/v2/p/app/tags/list?n=1');
    expect(h.jsonOf(page).tags).toEqual(['a']);
    expect(page.headers.Link).toBe('</v2/p/app/tags/list?n=1&last=a>; rel="next"');
    // Nothing cached for this repository → 503, not an empty list.
    const unknown = await h.request('GET', '/v2/p/other/tags/list');
    expect(unknown.status).toBe(503);
  });
});

describe('tags/list cannot grow the index', () => {
  /** Rows and body bytes of the SQLite index's listings table. */
  function listingRows(): { rows: number; bytes: number } {
    const db = new Database(h.dbPath, { readonly: true });
    try {
      const r = db.prepare('SELECT COUNT(*) AS rows, COALESCE(SUM(length(body)), 0) AS bytes FROM listings').get() as { rows: number; bytes: number };
      return r;
    } finally {
      db.close();
    }
  }

  it('keeps no list for repositories never pulled, however many a client names', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    const many = Array.from({ length: 2000 }, (_, i) => `tag-${String(i).padStart(5, '0')}`);
    for (let r = 0; r < 60; r++) {
      seedImage(up, `public/repo-${r}`, 'v0', [Buffer.from(`layer ${r}`)]); // exists upstream (a public repository)
      for (const t of many) up.tags.get(`public/repo-${r}`)!.add(t);
    }
    for (let r = 0; r < 60; r++) {
      const res = await h.request('GET', `/v2/p/public/repo-${r}/tags/list`);
      expect(res.status).toBe(200);
      expect((h.jsonOf(res) as { tags: string[] }).tags).toHaveLength(2001);
    }
    expect(listingRows()).toEqual({ rows: 0, bytes: 0 });
    // Nothing kept, nothing cached: an outage answers 503 for them, as for any unknown repository.
    up.faults.down = true;
    expect((await h.request('GET', '/v2/p/public/repo-0/tags/list')).status).toBe(503);
  });

  it('a GC pass removes listings an older release kept for repositories without content, once', async () => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    seedImage(up, 'kept', 'v1', [Buffer.from('v1')]);
    expect((await h.request('GET', '/v2/p/kept/manifests/v1')).status).toBe(200);
    // What a release before this one left: tag lists for names the cache never pulled, and one for a cached one.
    const db = new Database(h.dbPath);
    const insert = db.prepare('INSERT INTO listings (name, key, body, fetched_at) VALUES (?, ?, ?, 0)');
    for (let r = 0; r < 5; r++) insert.run(`p/public/repo-${r}`, 'tags', JSON.stringify(['x', 'y']));
    insert.run('p/kept', 'tags', '["v1"]');
    db.close();
    expect(listingRows().rows).toBe(6);
    const dry = await h.lifecycle.gc({ dryRun: true });
    expect(dry.dryRun).toBe(true);
    expect(listingRows().rows).toBe(6);
    await h.lifecycle.gc();
    expect(listingRows().rows).toBe(1);
    expect((await h.index.getListing('p/kept', 'tags'))?.body).toBe('["v1"]');
    expect(await h.index.getLifecycleState('listings')).toBe('v1');
  });
});

describe('tags/list keeps every spec MUST whatever the upstream does with n and last', () => {
  // Byte order, as distribution's sort.Strings (the conformance suite accepts it beside case-insensitive order).
  const TAGS = ['v2', 'latest', 'Alpha', 'v10', '1.0', 'beta', 'v1'];
  const SORTED = [...TAGS].sort();

  /**
   * Follows `Link: <...>; rel="next"` from `first` (bounded) and checks each page against the spec ("Listing
   * Tags"): sorted, at most `n` tags, fewer than `n` only when no more tags follow or with a `Link`, `n` kept in
   * the `Link`. The tags of all pages together must be `expected`.
   */
  async function walk(first: string, expected: string[], n?: number): Promise<void> {
    const seen: string[] = [];
    let url: string | undefined = first;
    for (let page = 0; url; page++) {
      expect(page).toBeLessThan(20);
      const res = await h.request('GET', url);
      expect(res.status).toBe(200);
      const body = h.jsonOf(res) as { name: string; tags: string[] };
      expect(body.name).toBe('p/app');
      expect(body.tags).toEqual([...body.tags].sort());
      const link = res.headers.Link;
      if (n !== undefined) expect(body.tags.length).toBeLessThanOrEqual(n);
      if (n !== undefined && body.tags.length < n && link === undefined) expect(seen.length + body.tags.length).toBe(expected.length);
      seen.push(...body.tags);
      if (link === undefined) break;
      const m = /^<([^>]+)>; rel="next"$/.exec(link);
      expect(m).not.toBeNull();
      url = m![1];
      if (n !== undefined) expect(new URLSearchParams(url.split('?')[1]).get('n')).toBe(String(n));
    }
    expect(seen).toEqual(expected);
  }

  it.each([
    ['honours n and last', {}],
    ['ignores n and last (as Debian\'s distribution 2.8 does)', { ignorePaging: true }],
    ['ignores them and answers in insertion order', { ignorePaging: true, unsorted: true }],
    ['pages at most 2 tags itself, with a Link', { maxPage: 2 }],
  ])('when the upstream %s', async (_, tagList) => {
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    for (const t of TAGS) seedImage(up, 'app', t, [Buffer.from(t)]);
    up.faults.tagList = tagList;
    await walk('/v2/p/app/tags/list', SORTED);
    for (const n of [1, 3, 7, 50]) await walk(`/v2/p/app/tags/list?n=${n}`, SORTED, n);
    // last: non-inclusive, lexical, with or without n.
    const afterBeta = SORTED.filter((t) => t > 'beta');
    await walk('/v2/p/app/tags/list?last=beta', afterBeta);
    await walk('/v2/p/app/tags/list?n=2&last=beta', afterBeta, 2);
    await walk(`/v2/p/app/tags/list?n=2&last=${SORTED[SORTED.length - 1]}`, [], 2);
    // n = 0: an empty list and no Link.
    const none = await h.request('GET', '/v2/p/app/tags/list?n=0');
    expect(h.jsonOf(none)).toEqual({ name: 'p/app', tags: [] });
    expect(none.headers.Link).toBeUndefined();
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
