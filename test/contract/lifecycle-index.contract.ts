/**
 * Contract suite for the lifecycle's index ports (last-pulled times, paged repository listings, conditional
 * deletes, blob reference items, blob record tombstones when the adapter has blob records), run against every
 * adapter: SQLite in the unit tier, DynamoDB Local in the e2e tier. Each test opens a fresh, empty index.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256Digest, type Digest } from '../../shared/oci/digest.js';
import type { BlobRecords, LifecycleIndex, ManifestRecord, TagRecord } from '../../shared/store/ports.js';
import type { ContractIndex } from './index-ports.contract.js';

/** The ports under test. */
export type LifecycleContractIndex = ContractIndex & LifecycleIndex & Partial<BlobRecords>;

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const blob = (label: string): Digest => sha256Digest(`blob ${label}`);
const T0 = 1_700_000_000_000;

function manifest(name: string, label: string, pulledAt?: number): ManifestRecord {
  const body = new TextEncoder().encode(JSON.stringify({ schemaVersion: 2, label }));
  return { name, digest: sha256Digest(body), mediaType: OCI_MANIFEST, size: body.length, body, ...(pulledAt === undefined ? {} : { pulledAt }) };
}

function tag(name: string, t: string, digest: Digest, pulledAt?: number): TagRecord {
  return { name, tag: t, digest, mediaType: OCI_MANIFEST, size: 10, fetchedAt: T0, checkedAt: T0, ...(pulledAt === undefined ? {} : { pulledAt }) };
}

/** Registers the suite for one adapter; `open` must give a fresh, empty index each call. */
export function describeLifecycleIndexContract(label: string, open: () => Promise<{ index: LifecycleContractIndex; close(): Promise<void> }>): void {
  describe(`lifecycle index contract: ${label}`, () => {
    let opened: { index: LifecycleContractIndex; close(): Promise<void> };
    let index: LifecycleContractIndex;
    beforeEach(async () => {
      opened = await open();
      index = opened.index;
    });
    afterEach(async () => {
      await opened.close();
    });

    it('keeps a tag\'s pulledAt; recordTagPull changes only it, and is a no-op for a missing tag', async () => {
      const m = manifest('ghcr/org/app', 'a');
      await index.putTag(tag('ghcr/org/app', 'v1', m.digest, T0 + 5));
      expect((await index.getTag('ghcr/org/app', 'v1'))?.pulledAt).toBe(T0 + 5);
      await index.recordTagPull('ghcr/org/app', 'v1', T0 + 9);
      expect(await index.getTag('ghcr/org/app', 'v1')).toEqual(tag('ghcr/org/app', 'v1', m.digest, T0 + 9));
      await index.recordTagPull('ghcr/org/app', 'missing', T0);
      expect(await index.getTag('ghcr/org/app', 'missing')).toBeUndefined();
    });

    it('a manifest\'s pulledAt is the given one or its store time; storing it again or recordManifestPull sets it', async () => {
      const before = Date.now();
      const m = manifest('quay/org/app', 'm');
      await index.putManifest(m, []);
      const stored = (await index.getManifest(m.name, m.digest))!.pulledAt!;
      expect(stored).toBeGreaterThanOrEqual(before - 1000);
      expect(stored).toBeLessThanOrEqual(Date.now() + 1000);
      await index.putManifest({ ...m, pulledAt: T0 }, []);
      expect((await index.getManifest(m.name, m.digest))?.pulledAt).toBe(T0);
      expect(await index.recordManifestPull(m.name, m.digest, T0 + 1)).toBe(true);
      expect((await index.getManifest(m.name, m.digest))?.pulledAt).toBe(T0 + 1);
      expect(await index.recordManifestPull('quay/org/other', m.digest, T0)).toBe(false);
      expect(await index.getManifest('quay/org/other', m.digest)).toBeUndefined();
    });

    it('lists a repository\'s tags and manifests in key order, paged by `after`', async () => {
      const name = 'docker-hub/library/alpine';
      const ms = ['a', 'b', 'c'].map((l) => manifest(name, l, T0));
      for (const m of ms) await index.putManifest(m, [blob(m.digest)]);
      for (const t of ['3.20', '3.19', 'edge', 'latest', '3.18']) await index.putTag(tag(name, t, ms[0].digest, T0));
      await index.putTag(tag('docker-hub/library/alpine2', 'x', ms[0].digest));
      const first = await index.listTagRecords(name, { limit: 2 });
      expect(first.map((t) => t.tag)).toEqual(['3.18', '3.19']);
      expect(first[0]).toEqual(tag(name, '3.18', ms[0].digest, T0));
      const rest = await index.listTagRecords(name, { after: '3.19', limit: 10 });
      expect(rest.map((t) => t.tag)).toEqual(['3.20', 'edge', 'latest']);
      const digests = ms.map((m) => m.digest).sort();
      const page1 = await index.listManifestRecords(name, { limit: 2 });
      expect(page1.map((m) => m.digest)).toEqual(digests.slice(0, 2));
      const page2 = await index.listManifestRecords(name, { after: page1[1].digest, limit: 2 });
      expect(page2.map((m) => m.digest)).toEqual(digests.slice(2));
      const full = page2[0];
      const orig = ms.find((m) => m.digest === full.digest)!;
      expect(Buffer.from(full.body).equals(Buffer.from(orig.body))).toBe(true);
      expect({ ...full, body: undefined }).toEqual({ ...orig, body: undefined });
      expect(await index.listManifestRecords('docker-hub/library/none', { limit: 5 })).toEqual([]);
    });

    it('deleteTagIf deletes only while the tag still points at the digest and was not pulled since', async () => {
      const a = sha256Digest('a');
      await index.putTag(tag('k8s/pause', '3.9', a, T0 + 1));
      expect(await index.deleteTagIf('k8s/pause', '3.9', { digest: sha256Digest('b'), pulledAt: T0 + 1 })).toBe(false);
      expect(await index.deleteTagIf('k8s/pause', '3.9', { digest: a, pulledAt: T0 + 2 })).toBe(false);
      expect(await index.getTag('k8s/pause', '3.9')).toBeDefined();
      expect(await index.deleteTagIf('k8s/pause', '3.9', { digest: a, pulledAt: T0 + 1 })).toBe(true);
      expect(await index.getTag('k8s/pause', '3.9')).toBeUndefined();
      expect(await index.deleteTagIf('k8s/pause', '3.9', { digest: a })).toBe(false);
      // A tag written without pulledAt (before the lifecycle): its fetch time stands for it.
      await index.putTag(tag('k8s/pause', 'old', a));
      expect(await index.deleteTagIf('k8s/pause', 'old', { digest: a, pulledAt: T0 })).toBe(true);
      await index.putTag(tag('k8s/pause', 'any', a, T0 + 7));
      expect(await index.deleteTagIf('k8s/pause', 'any', { digest: a })).toBe(true);
    });

    it('blobReferrers lists the distinct rules referencing a blob, across repositories and look-alike prefixes', async () => {
      const shared = blob('shared');
      expect(await index.blobReferrers(shared)).toEqual([]);
      const refs: Array<[string, string]> = [['ghcr/org', 'ghcr/org/x/app'], ['ghcr', 'ghcr/a'], ['ghcr', 'ghcr/b'], ['ghcr-x', 'ghcr-x/c'], ['docker-hub', 'docker-hub/library/d']];
      for (const [rule, name] of refs) await index.putManifest(manifest(name, name), [shared, blob(name)], rule);
      expect(await index.blobReferrers(shared)).toEqual(['docker-hub', 'ghcr', 'ghcr-x', 'ghcr/org']);
      expect(await index.blobReferrers(blob('ghcr/a'))).toEqual(['ghcr']);
    });

    it('referencedBy: a blob a stored manifest of that repository and rule references, not look-alike names or other rules', async () => {
      const layer = blob('referenced');
      expect(await index.referencedBy(layer, 'ghcr', 'ghcr/org/app')).toBe(false);
      await index.putManifest(manifest('ghcr/org/app', 'ref-a', T0), [layer], 'ghcr');
      expect(await index.referencedBy(layer, 'ghcr', 'ghcr/org/app')).toBe(true);
      for (const [rule, name] of [['ghcr', 'ghcr/org/ap'], ['ghcr', 'ghcr/org/app2'], ['ghcr', 'ghcr/org'], ['ghcr/org', 'ghcr/org/app'], ['quay', 'ghcr/org/app']]) {
        expect(await index.referencedBy(layer, rule, name), `${rule} ${name}`).toBe(false);
      }
      expect(await index.referencedBy(blob('other'), 'ghcr', 'ghcr/org/app')).toBe(false);
    });

    it('deleteManifest removes the item and its references, not another manifest\'s; conditional on pulledAt', async () => {
      const shared = blob('layer');
      const own = blob('own');
      const a = manifest('ghcr/org/a', 'a', T0);
      const b = manifest('quay/org/b', 'b', T0);
      await index.putManifest(a, [shared, own, own], 'ghcr');
      await index.putManifest(b, [shared], 'quay');
      expect(await index.deleteManifest(a.name, a.digest, { referencedBlobs: [shared, own], ifPulledAt: T0 + 1 })).toBe(false);
      expect(await index.getManifest(a.name, a.digest)).toBeDefined();
      expect(await index.blobReferrers(own)).toEqual(['ghcr']);
      expect(await index.deleteManifest(a.name, a.digest, { referencedBlobs: [shared, own], ifPulledAt: T0 })).toBe(true);
      expect(await index.getManifest(a.name, a.digest)).toBeUndefined();
      expect(await index.blobReferrers(own)).toEqual([]);
      expect(await index.blobReferrers(shared)).toEqual(['quay']);
      expect(await index.deleteManifest(a.name, a.digest, { referencedBlobs: [shared, own] })).toBe(false);
      expect(await index.deleteManifest(b.name, b.digest, { referencedBlobs: [shared] })).toBe(true);
      expect(await index.blobReferrers(shared)).toEqual([]);
      expect(await index.finishInterruptedDeletes()).toBe(0);
    });

    it('a manifest stored again (a refill) is not deleted on the earlier read, and keeps its references', async () => {
      const layer = blob('refill');
      const m = manifest('ghcr/org/refill', 'r', T0);
      await index.putManifest(m, [layer], 'ghcr');
      await index.putManifest({ ...m, pulledAt: T0 + 60_000 }, [layer], 'ghcr');
      expect(await index.deleteManifest(m.name, m.digest, { referencedBlobs: [layer], ifPulledAt: T0 })).toBe(false);
      expect(await index.getManifest(m.name, m.digest)).toBeDefined();
      expect(await index.blobReferrers(layer)).toEqual(['ghcr']);
    });

    it('records the references of a manifest naming many blobs, duplicates included (chunked writes)', async () => {
      const refs = Array.from({ length: 130 }, (_, i) => blob(`many-${i}`));
      await index.putManifest(manifest('docker-hub/library/many', 'many'), [...refs, refs[0], refs[129]], 'docker-hub');
      for (const d of [refs[0], refs[24], refs[25], refs[129]]) expect(await index.blobReferrers(d)).toEqual(['docker-hub']);
    });

    it('addBlobReferences records the references of a manifest stored without them', async () => {
      const layer = blob('legacy');
      const m = manifest('k8s/legacy', 'l');
      await index.putManifest(m, []);
      expect(await index.blobReferrers(layer)).toEqual([]);
      await index.addBlobReferences(m.name, m.digest, 'k8s', [layer, layer]);
      expect(await index.blobReferrers(layer)).toEqual(['k8s']);
      expect(await index.deleteManifest(m.name, m.digest, { referencedBlobs: [layer] })).toBe(true);
      expect(await index.blobReferrers(layer)).toEqual([]);
    });

    it('dropRepositoryIfEmpty refuses a repository with a tag or a manifest, else drops its links and listings', async () => {
      const name = 'quay/org/drop';
      const m = manifest(name, 'd');
      await index.putManifest(m, [blob('d')], 'quay');
      await index.link(name, blob('d')); // a confirmed link (a fill for this name, or its upstream's HEAD)
      await index.putListing(name, 'tags', '["v1"]');
      await index.putTag(tag(name, 'v1', m.digest));
      expect(await index.dropRepositoryIfEmpty(name)).toBe(false);
      await index.deleteTagIf(name, 'v1', { digest: m.digest });
      expect(await index.dropRepositoryIfEmpty(name)).toBe(false);
      await index.deleteManifest(name, m.digest, { referencedBlobs: [blob('d')] });
      expect(await index.isLinked(name, blob('d'))).toBe(true);
      expect(await index.dropRepositoryIfEmpty(name)).toBe(true);
      expect(await index.isLinked(name, blob('d'))).toBe(false);
      expect(await index.getListing(name, 'tags')).toBeUndefined();
    });

    it('sweepListings removes listings of repositories without a tag or manifest (dry run counts), keeps the others', async () => {
      const m = manifest('quay/org/left', 'l');
      for (const name of ['quay/org/left', 'quay/org/kept']) {
        await index.putTag(tag(name, 'v1', m.digest));
        expect(await index.putListing(name, 'tags', '["v1"]')).toBe(true);
        expect(await index.putListing(name, `referrers/${m.digest}`, '[]')).toBe(true);
      }
      // Emptied without the lifecycle's drop (what older releases left behind for any name asked about).
      expect(await index.deleteTagIf('quay/org/left', 'v1', { digest: m.digest })).toBe(true);
      expect(await index.sweepListings({ dryRun: true, stopped: () => false })).toEqual({ removed: 2 });
      expect((await index.getListing('quay/org/left', 'tags'))?.body).toBe('["v1"]');
      expect(await index.sweepListings({ dryRun: false, stopped: () => false })).toEqual({ removed: 2 });
      expect(await index.getListing('quay/org/left', 'tags')).toBeUndefined();
      expect(await index.getListing('quay/org/left', `referrers/${m.digest}`)).toBeUndefined();
      expect((await index.getListing('quay/org/kept', 'tags'))?.body).toBe('["v1"]');
      expect(await index.sweepListings({ dryRun: false, stopped: () => false })).toEqual({ removed: 0 });
    });

    it('a listing put while the lifecycle drops its repository does not outlive it', async () => {
      const name = 'quay/org/racing';
      const m = manifest(name, 'r');
      await index.putTag(tag(name, 'v1', m.digest));
      await index.deleteTagIf(name, 'v1', { digest: m.digest });
      expect(await index.dropRepositoryIfEmpty(name)).toBe(true);
      expect(await index.putListing(name, 'tags', '["v1"]')).toBe(false);
      expect(await index.getListing(name, 'tags')).toBeUndefined();
    });

    it('a dropped repository leaves the catalog; a tag or manifest stored again (by the same process) lists it again', async () => {
      const name = 'ghcr/org/emptied';
      const m = manifest(name, 'e', T0);
      await index.putManifest(m, [blob('e')], 'ghcr');
      await index.putTag(tag(name, 'v1', m.digest, T0));
      await index.putTag(tag('ghcr/org/kept', 'v1', m.digest, T0));
      expect(await index.listRepositories()).toEqual(['ghcr/org/emptied', 'ghcr/org/kept']);
      expect(await index.deleteTagIf(name, 'v1', { digest: m.digest })).toBe(true);
      expect(await index.deleteManifest(name, m.digest, { referencedBlobs: [blob('e')] })).toBe(true);
      expect(await index.dropRepositoryIfEmpty(name)).toBe(true);
      expect(await index.listRepositories()).toEqual(['ghcr/org/kept']);
      expect(await index.listRepositories({ last: 'ghcr/org/a' })).toEqual(['ghcr/org/kept']);
      // The index wrote this repository's marker before: it must not take it for still written.
      await index.putTag(tag(name, 'v2', m.digest, T0));
      expect(await index.listRepositories()).toEqual(['ghcr/org/emptied', 'ghcr/org/kept']);
      expect(await index.deleteTagIf(name, 'v2', { digest: m.digest })).toBe(true);
      expect(await index.dropRepositoryIfEmpty(name)).toBe(true);
      await index.putManifest(m, [blob('e')], 'ghcr');
      expect(await index.listRepositories()).toEqual(['ghcr/org/emptied', 'ghcr/org/kept']);
    });

    it('keeps lifecycle state values by key, and removes them', async () => {
      expect(await index.getLifecycleState('gc')).toBeUndefined();
      await index.putLifecycleState('gc', '{"phase":"blobs"}');
      await index.putLifecycleState('usage', '{}');
      expect(await index.getLifecycleState('gc')).toBe('{"phase":"blobs"}');
      await index.putLifecycleState('gc', undefined);
      expect(await index.getLifecycleState('gc')).toBeUndefined();
      expect(await index.getLifecycleState('usage')).toBe('{}');
    });

    it('blob records: a tombstone is not served, can be republished, is replaced by a new commit, and deleted', async (ctx) => {
      if (!index.unpublishBlobRecord) ctx.skip();
      const r = index as LifecycleContractIndex & BlobRecords;
      const d = blob('tombstone');
      expect(await r.unpublishBlobRecord(d, T0)).toBe(false);
      await r.putBlobRecord(d, 42);
      const committed = (await r.getBlobRecord(d))!;
      expect(await r.unpublishBlobRecord(d, T0)).toBe(true);
      expect(await r.unpublishBlobRecord(d, T0 + 1)).toBe(false);
      expect(await r.getBlobRecord(d)).toBeUndefined();
      expect(await r.getBlobRecordState(d)).toEqual({ ...committed, unpublishedAt: T0 });
      expect(await r.republishBlobRecord(d)).toBe(true);
      expect(await r.getBlobRecord(d)).toEqual(committed);
      expect(await r.deleteBlobRecord(d, { onlyUnpublished: true })).toBe(false);
      await r.unpublishBlobRecord(d, T0);
      await r.putBlobRecord(d, 42); // a refill's commit replaces the tombstone
      expect((await r.getBlobRecordState(d))?.unpublishedAt).toBeUndefined();
      expect(await r.deleteBlobRecord(d, { onlyUnpublished: false })).toBe(true);
      expect(await r.getBlobRecordState(d)).toBeUndefined();
    });
  });
}
