/**
 * Contract suite for the index ports (TagIndex, ManifestStore, BlobLinks, FillLeases, and BlobRecords when the
 * adapter has them), run against every adapter: SQLite in the unit tier, DynamoDB Local in the e2e tier.
 * Each test opens a fresh, empty index and closes it afterwards.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256Digest, type Digest } from '../../shared/oci/digest.js';
import type {
  BlobLinks, BlobRecords, FillLeases, LastCheck, ListingCache, ManifestStore, ManifestVerification, TagIndex, TagRecord,
} from '../../shared/store/ports.js';

/** The ports under test; blob records are optional (the embedded stack needs none). */
export type ContractIndex = TagIndex & ManifestStore & BlobLinks & FillLeases & ListingCache & Partial<BlobRecords>;

/** What `open` gives the suite. `largeManifests: false` skips the 600 KB manifest case (default true). */
export interface OpenedIndex {
  index: ContractIndex;
  close(): Promise<void>;
  largeManifests?: boolean;
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const blobDigest = (label: string): Digest => sha256Digest(`blob ${label}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function tagRecord(name: string, tag: string, overrides: Partial<TagRecord> = {}): TagRecord {
  return {
    name, tag, digest: sha256Digest(`${name}:${tag}`), mediaType: OCI_MANIFEST, size: 1234,
    fetchedAt: 1_700_000_000_000, checkedAt: 1_700_000_000_500, ...overrides,
  };
}

/** A manifest of `size` random bytes (not valid UTF-8, so any text conversion would show). */
function manifestOf(name: string, size: number, mediaType = OCI_MANIFEST) {
  const body = randomBytes(size);
  body[0] = 0xff;
  return { name, digest: sha256Digest(body), mediaType, size, body: new Uint8Array(body) };
}

/** Byte order, which is the order both SQLite (BINARY) and DynamoDB (UTF-8 bytes) sort in. */
const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Registers the contract suite for one adapter; `open` must give a fresh, empty index each call. */
export function describeIndexContract(label: string, open: () => Promise<OpenedIndex>): void {
  describe(`index ports contract: ${label}`, () => {
    let opened: OpenedIndex;
    let index: ContractIndex;
    beforeEach(async () => {
      opened = await open();
      index = opened.index;
    });
    afterEach(async () => {
      await opened.close();
    });

    describe('tag index', () => {
      it('returns undefined for an unknown tag, then the record that was put', async () => {
        expect(await index.getTag('docker-hub/library/alpine', 'latest')).toBeUndefined();
        const rec = tagRecord('docker-hub/library/alpine', 'latest');
        await index.putTag(rec);
        expect(await index.getTag('docker-hub/library/alpine', 'latest')).toEqual(rec);
        expect(await index.getTag('docker-hub/library/alpine', 'edge')).toBeUndefined();
        expect(await index.getTag('docker-hub/library/busybox', 'latest')).toBeUndefined();
      });

      it('overwrites a tag that moved', async () => {
        await index.putTag(tagRecord('ghcr/org/app', 'v1'));
        const moved = tagRecord('ghcr/org/app', 'v1', {
          digest: sha256Digest('moved'), mediaType: OCI_INDEX, size: 999, fetchedAt: 1_800_000_000_000, checkedAt: 1_800_000_000_001,
        });
        await index.putTag(moved);
        expect(await index.getTag('ghcr/org/app', 'v1')).toEqual(moved);
        expect(await index.listTags('ghcr/org/app')).toEqual(['v1']);
      });

      it('touchTag updates checkedAt only, and is a no-op for a missing tag', async () => {
        const rec = tagRecord('quay/org/app', 'stable');
        await index.putTag(rec);
        await index.touchTag('quay/org/app', 'stable', 1_900_000_000_000);
        expect(await index.getTag('quay/org/app', 'stable')).toEqual({ ...rec, checkedAt: 1_900_000_000_000 });
        await index.touchTag('quay/org/app', 'missing', 1_900_000_000_000);
        await index.touchTag('quay/org/other', 'stable', 1_900_000_000_000);
        expect(await index.getTag('quay/org/app', 'missing')).toBeUndefined();
        expect(await index.getTag('quay/org/other', 'stable')).toBeUndefined();
        expect(await index.listTags('quay/org/app')).toEqual(['stable']);
        expect(await index.listRepositories()).toEqual(['quay/org/app']);
      });

      it('round-trips dueAt and lastCheck through putTag/getTag, and a put without them clears them', async () => {
        const plain = tagRecord('ghcr/org/due', 'plain');
        await index.putTag(plain);
        const got = await index.getTag('ghcr/org/due', 'plain');
        expect(got).toEqual(plain);
        expect(got?.dueAt).toBeUndefined();
        expect(got?.lastCheck).toBeUndefined();

        const lastCheck: LastCheck = { at: 1_700_000_100_000, result: 'error', error: 'upstream answered 503' };
        const due = tagRecord('ghcr/org/due', 'latest', { dueAt: 1_700_000_200_000, lastCheck });
        await index.putTag(due);
        expect(await index.getTag('ghcr/org/due', 'latest')).toEqual(due);
        const unchanged = tagRecord('ghcr/org/due', 'edge', { dueAt: 1_700_000_300_000, lastCheck: { at: 5, result: 'unchanged' } });
        await index.putTag(unchanged);
        expect(await index.getTag('ghcr/org/due', 'edge')).toEqual(unchanged);

        // A put replaces the whole entry: without dueAt the tag is no longer due, without lastCheck it has none.
        await index.putTag(tagRecord('ghcr/org/due', 'latest'));
        const replaced = await index.getTag('ghcr/org/due', 'latest');
        expect(replaced).toEqual(tagRecord('ghcr/org/due', 'latest'));
        expect(replaced?.dueAt).toBeUndefined();
        expect(replaced?.lastCheck).toBeUndefined();
        expect(await index.listDueTags(2_000_000_000_000, 10)).toEqual([unchanged]);
      });

      it('recordCheck sets checkedAt, dueAt and lastCheck keeping the digest; undefined dueAt removes it', async () => {
        const rec = tagRecord('quay/org/app', 'latest', { dueAt: 1_700_000_100_000 });
        await index.putTag(rec);
        const moved: LastCheck = { at: 1_700_000_150_000, result: 'moved' };
        await index.recordCheck('quay/org/app', 'latest', { checkedAt: 1_700_000_150_000, dueAt: 1_700_003_750_000, lastCheck: moved });
        expect(await index.getTag('quay/org/app', 'latest')).toEqual({
          ...rec, checkedAt: 1_700_000_150_000, dueAt: 1_700_003_750_000, lastCheck: moved,
        });
        expect(await index.listDueTags(1_700_003_749_999, 10)).toEqual([]);
        expect((await index.listDueTags(1_700_003_750_000, 10)).map((t) => t.dueAt)).toEqual([1_700_003_750_000]);

        // An error keeps its message; no dueAt means never due again.
        const failed: LastCheck = { at: 1_700_004_000_000, result: 'error', error: 'connect ETIMEDOUT' };
        await index.recordCheck('quay/org/app', 'latest', { checkedAt: 1_700_004_000_000, lastCheck: failed });
        const got = await index.getTag('quay/org/app', 'latest');
        expect(got).toEqual({ ...rec, checkedAt: 1_700_004_000_000, dueAt: undefined, lastCheck: failed });
        expect(got?.dueAt).toBeUndefined();
        expect(got?.digest).toBe(rec.digest);
        expect(await index.listDueTags(Number.MAX_SAFE_INTEGER, 10)).toEqual([]);

        // Due again once a later check gives a dueAt.
        const again: LastCheck = { at: 1_700_005_000_000, result: 'unchanged' };
        await index.recordCheck('quay/org/app', 'latest', { checkedAt: 1_700_005_000_000, dueAt: 1_700_006_000_000, lastCheck: again });
        expect(await index.listDueTags(1_700_006_000_000, 10)).toEqual([
          { ...rec, checkedAt: 1_700_005_000_000, dueAt: 1_700_006_000_000, lastCheck: again },
        ]);
      });

      it('recordCheck is a no-op for a missing tag, and does not create it', async () => {
        await index.putTag(tagRecord('quay/org/app', 'stable'));
        const check = { checkedAt: 1_900_000_000_000, dueAt: 1_800_000_000_000, lastCheck: { at: 1_900_000_000_000, result: 'gone' as const } };
        await index.recordCheck('quay/org/app', 'missing', check);
        await index.recordCheck('quay/org/other', 'stable', check);
        await index.recordCheck('quay/org/other', 'stable', { ...check, dueAt: undefined });
        expect(await index.getTag('quay/org/app', 'missing')).toBeUndefined();
        expect(await index.getTag('quay/org/other', 'stable')).toBeUndefined();
        expect(await index.getTag('quay/org/app', 'stable')).toEqual(tagRecord('quay/org/app', 'stable'));
        expect(await index.listTags('quay/org/app')).toEqual(['stable']);
        expect(await index.listTags('quay/org/other')).toEqual([]);
        expect(await index.listRepositories()).toEqual(['quay/org/app']);
        expect(await index.listDueTags(Number.MAX_SAFE_INTEGER, 10)).toEqual([]);
      });

      it('deleteTag removes the tag only: other tags and the repository\'s manifests stay', async () => {
        const m = manifestOf('docker-hub/library/redis', 256);
        await index.putManifest(m, [blobDigest('redis-layer')]);
        await index.putTag(tagRecord('docker-hub/library/redis', '7', { digest: m.digest, dueAt: 1_700_000_000_000 }));
        await index.putTag(tagRecord('docker-hub/library/redis', '8', { digest: m.digest }));
        await index.deleteTag('docker-hub/library/redis', '7');
        expect(await index.getTag('docker-hub/library/redis', '7')).toBeUndefined();
        expect(await index.getTag('docker-hub/library/redis', '8')).toEqual(tagRecord('docker-hub/library/redis', '8', { digest: m.digest }));
        expect(await index.listTags('docker-hub/library/redis')).toEqual(['8']);
        expect(await index.listDueTags(Number.MAX_SAFE_INTEGER, 10)).toEqual([]);
        const kept = await index.getManifest('docker-hub/library/redis', m.digest);
        expect(Buffer.from(kept!.body).equals(Buffer.from(m.body))).toBe(true);
        expect(await index.listRepositories()).toEqual(['docker-hub/library/redis']);

        // Deleting the last tag keeps the manifest (and so the repository); deleting a missing tag is a no-op.
        await index.deleteTag('docker-hub/library/redis', '8');
        await index.deleteTag('docker-hub/library/redis', '8');
        await index.deleteTag('docker-hub/library/none', 'latest');
        expect(await index.listTags('docker-hub/library/redis')).toEqual([]);
        expect(await index.getManifest('docker-hub/library/redis', m.digest)).toBeDefined();
        expect(await index.listRepositories()).toEqual(['docker-hub/library/redis']);
        // A deleted tag can be put again.
        await index.putTag(tagRecord('docker-hub/library/redis', '7'));
        expect(await index.getTag('docker-hub/library/redis', '7')).toEqual(tagRecord('docker-hub/library/redis', '7'));
      });

      describe('listDueTags', () => {
        const now = 1_750_000_000_000;

        it('lists tags due at or before now, earliest first, as full records, honouring limit', async () => {
          expect(await index.listDueTags(now, 10)).toEqual([]);
          const lc: LastCheck = { at: now - 86_400_000, result: 'unchanged' };
          const due = [
            tagRecord('ghcr/a/b', 'v1', { dueAt: now - 5_000, lastCheck: lc }),
            tagRecord('docker-hub/library/alpine', 'latest', { dueAt: now - 60_000 }),
            tagRecord('docker-hub/library/alpine', 'edge', { dueAt: now }), // due exactly now: included
            tagRecord('k8s/pause', '3.9', { dueAt: 1 }),
          ];
          const notDue = [
            tagRecord('ghcr/a/b', 'v2', { dueAt: now + 1 }), // in the future
            tagRecord('quay/x/y', 'future', { dueAt: now + 3_600_000 }),
            tagRecord('docker-hub/library/alpine', '3.19'), // never re-checked: no dueAt
            tagRecord('quay/x/y', 'release', { lastCheck: lc }),
          ];
          for (const r of [...notDue, ...due]) await index.putTag(r);
          const byDue = [...due].sort((a, b) => a.dueAt! - b.dueAt!);
          expect(await index.listDueTags(now, 10)).toEqual(byDue);
          expect(await index.listDueTags(now, 4)).toEqual(byDue);
          expect(await index.listDueTags(now, 2)).toEqual(byDue.slice(0, 2));
          expect(await index.listDueTags(now, 1)).toEqual(byDue.slice(0, 1));
          expect(await index.listDueTags(now, 0)).toEqual([]);
          expect(await index.listDueTags(now - 5_001, 10)).toEqual(byDue.slice(0, 2));
          expect(await index.listDueTags(0, 10)).toEqual([]);
          expect((await index.listDueTags(now + 3_600_000, 10)).map((t) => `${t.name}:${t.tag}`)).toEqual([
            'k8s/pause:3.9', 'docker-hub/library/alpine:latest', 'ghcr/a/b:v1', 'docker-hub/library/alpine:edge',
            'ghcr/a/b:v2', 'quay/x/y:future',
          ]);
        });

        it('returns the 15 earliest of 40 due tags spread over repositories (and shards), limit 15', async () => {
          // 40 due tags over 8 repositories with distinct dueAt in a scrambled insertion order (a stride that is
          // coprime with 40), plus tags due later and tags never due that must not displace them.
          const due = Array.from({ length: 40 }, (_, i) => {
            const j = (i * 17) % 40;
            return tagRecord(`ghcr/team${j % 8}/svc`, `t${j}`, { dueAt: now - 1_000_000 + j * 1_000 });
          });
          for (let i = 0; i < 10; i++) await index.putTag(tagRecord(`ghcr/team${i % 8}/svc`, `later${i}`, { dueAt: now + 1 + i }));
          for (let i = 0; i < 5; i++) await index.putTag(tagRecord(`ghcr/team${i}/svc`, `release${i}`));
          for (const r of due) await index.putTag(r);
          const byDue = [...due].sort((a, b) => a.dueAt! - b.dueAt!);
          const first15 = await index.listDueTags(now, 15);
          expect(first15).toEqual(byDue.slice(0, 15));
          expect(first15.map((t) => t.tag)).toEqual(Array.from({ length: 15 }, (_, j) => `t${j}`));
          expect(await index.listDueTags(now, 100)).toEqual(byDue);
          expect(await index.listDueTags(now - 1_000_000 + 14_000, 100)).toEqual(byDue.slice(0, 15));
        });
      });

      describe('listTags over 25 tags', () => {
        // Mixed case, digits, '_', '.', '-': byte order differs from numeric and case-insensitive order.
        const tags = [
          'latest', 'v1', 'v10', 'v2', 'v1.0', 'v1-rc', 'V1', 'A', 'a', 'Z', 'z', '_x', '0', '9', '10', '1.0.0',
          'stable', 'edge', 'alpine', 'alpine3.19', 'main', 'sha-abc', 'x_y', 'x-y', 'x.y',
        ];
        const sorted = [...tags].sort(byteOrder);
        const name = 'docker-hub/library/nginx';

        beforeEach(async () => {
          expect(new Set(tags).size).toBe(25);
          // A neighbour whose name extends this one must not leak into its listing.
          await index.putTag(tagRecord(`${name}2`, 'zz-other'));
          await index.putTag(tagRecord('docker-hub/library/nginw', '0-other'));
          for (const t of [...tags].reverse()) await index.putTag(tagRecord(name, t));
        });

        it('lists all tags in byte order by default', async () => {
          expect(await index.listTags(name)).toEqual(sorted);
          expect(await index.listTags(name, { n: 100 })).toEqual(sorted);
        });

        it('paginates with n and last until the list is exhausted', async () => {
          const p1 = await index.listTags(name, { n: 10 });
          expect(p1).toEqual(sorted.slice(0, 10));
          const p2 = await index.listTags(name, { n: 10, last: p1[9] });
          expect(p2).toEqual(sorted.slice(10, 20));
          const p3 = await index.listTags(name, { n: 10, last: p2[9] });
          expect(p3).toEqual(sorted.slice(20));
          expect(await index.listTags(name, { n: 10, last: p3[p3.length - 1] })).toEqual([]);
        });

        it('lists after a last that is not itself a tag, and n = 0 gives none', async () => {
          // 'b' is not a tag: the listing starts at the first tag after it.
          expect(await index.listTags(name, { last: 'b' })).toEqual(sorted.filter((t) => byteOrder(t, 'b') > 0));
          expect(await index.listTags(name, { n: 3, last: 'V' })).toEqual(sorted.filter((t) => byteOrder(t, 'V') > 0).slice(0, 3));
          expect(await index.listTags(name, { n: 0 })).toEqual([]);
          expect(await index.listTags('docker-hub/library/none')).toEqual([]);
        });
      });
    });

    describe('repositories', () => {
      it('lists repositories holding a tag or a manifest, in byte order, paginated', async () => {
        const viaTag = ['docker-hub/library/alpine', 'ghcr/a/b', 'ghcr/a/b/c', 'k8s/pause', 'quay/x-y/z'];
        const viaManifest = ['ecr-public/lambda/node', 'ghcr/a', 'k8s/coredns/coredns'];
        for (const name of viaTag) await index.putTag(tagRecord(name, 'v1'));
        await index.putTag(tagRecord('ghcr/a/b', 'v2')); // a second tag of a repository is not a second repository
        for (const name of viaManifest) await index.putManifest(manifestOf(name, 100), []);
        await index.putManifest(manifestOf('k8s/pause', 100), []); // both a tag and a manifest
        await index.link('linked/only', blobDigest('x')); // a link alone holds no repository

        const all = [...viaTag, ...viaManifest].sort(byteOrder);
        expect(await index.listRepositories()).toEqual(all);
        const p1 = await index.listRepositories({ n: 3 });
        expect(p1).toEqual(all.slice(0, 3));
        const p2 = await index.listRepositories({ n: 3, last: p1[2] });
        expect(p2).toEqual(all.slice(3, 6));
        const p3 = await index.listRepositories({ n: 3, last: p2[2] });
        expect(p3).toEqual(all.slice(6));
        expect(await index.listRepositories({ n: 3, last: p3[p3.length - 1] })).toEqual([]);
        expect(await index.listRepositories({ last: 'h' })).toEqual(all.filter((r) => byteOrder(r, 'h') > 0));
        expect(await index.listRepositories({ n: 0 })).toEqual([]);
      });

      it('lists none when empty', async () => {
        expect(await index.listRepositories()).toEqual([]);
      });
    });

    describe('manifest store', () => {
      it('round-trips manifest bytes byte-exact, per repository', async () => {
        const m = manifestOf('ghcr/org/app', 4096, OCI_INDEX);
        expect(await index.getManifest(m.name, m.digest)).toBeUndefined();
        await index.putManifest(m, []);
        const got = await index.getManifest(m.name, m.digest);
        expect(got).toBeDefined();
        expect(got!.body).toBeInstanceOf(Uint8Array);
        expect(Buffer.from(got!.body).equals(Buffer.from(m.body))).toBe(true);
        // pulledAt: set to the store time when not given (lifecycle-index.contract.ts covers it).
        expect({ ...got!, body: undefined, pulledAt: undefined }).toEqual({ ...m, body: undefined });
        expect(await index.getManifest('ghcr/org/other', m.digest)).toBeUndefined();
        expect(await index.getManifest(m.name, sha256Digest('other'))).toBeUndefined();
      });

      it('round-trips a 1-byte manifest', async () => {
        const m = manifestOf('k8s/tiny', 1);
        await index.putManifest(m, []);
        expect(Buffer.from((await index.getManifest(m.name, m.digest))!.body).equals(Buffer.from(m.body))).toBe(true);
      });

      it('accepts the same manifest twice (idempotent)', async () => {
        const m = manifestOf('quay/org/app', 2048);
        await index.putManifest(m, [blobDigest('1')]);
        await index.putManifest(m, [blobDigest('1')]);
        const got = await index.getManifest(m.name, m.digest);
        expect(Buffer.from(got!.body).equals(Buffer.from(m.body))).toBe(true);
        expect(await index.listRepositories()).toEqual(['quay/org/app']);
      });

      it('round-trips a verification with the manifest; recordVerification replaces it, and creates nothing for a missing one', async () => {
        const v: ManifestVerification = { result: 'unsigned', reason: 'unknown-key', keySet: 'sha256:0123456789abcdef', at: 1_700_000_000_000 };
        const m = { ...manifestOf('ghcr/org/signed', 512), verification: v };
        await index.putManifest(m, []);
        expect((await index.getManifest(m.name, m.digest))!.verification).toEqual(v);
        const again: ManifestVerification = { result: 'verified', keySet: 'sha256:fedcba9876543210', via: 'index sha256:' + 'a'.repeat(64), keyId: 'sha256:00ff00ff00ff00ff', at: 1_700_000_001_000 };
        await index.recordVerification(m.name, m.digest, again);
        const got = await index.getManifest(m.name, m.digest);
        expect(got!.verification).toEqual(again);
        expect(Buffer.from(got!.body).equals(Buffer.from(m.body))).toBe(true);
        // A manifest stored without one has none; recording one for a manifest that is not stored creates nothing.
        const plain = manifestOf('ghcr/org/signed', 300);
        await index.putManifest(plain, []);
        expect((await index.getManifest(plain.name, plain.digest))!.verification).toBeUndefined();
        await index.recordVerification('ghcr/org/signed', sha256Digest('absent'), again);
        expect(await index.getManifest('ghcr/org/signed', sha256Digest('absent'))).toBeUndefined();
        expect(await index.listRepositories()).toEqual(['ghcr/org/signed']);
      });

      it('round-trips a 600 KB manifest (over a DynamoDB item) byte-exact', async (ctx) => {
        if (opened.largeManifests === false) ctx.skip();
        const m = manifestOf('docker-hub/library/big', 600 * 1024, OCI_INDEX);
        await index.putManifest(m, [blobDigest('big')]);
        const got = await index.getManifest(m.name, m.digest);
        expect(got!.size).toBe(600 * 1024);
        expect(got!.mediaType).toBe(OCI_INDEX);
        expect(Buffer.from(got!.body).equals(Buffer.from(m.body))).toBe(true);
      });
    });

    describe('blob links', () => {
      it('a stored manifest links none of the blobs it references: a reference is no confirmation by the name\'s upstream', async () => {
        // The manifest's upstream vouches for the manifest's bytes, not for having the blobs it names: a manifest of
        // one rule naming the digest of a private blob cached for another must not make that blob servable here.
        const m = manifestOf('ghcr/org/app', 512);
        const refs = [blobDigest('config'), blobDigest('layer1'), blobDigest('layer2')];
        await index.putManifest(m, refs, 'ghcr');
        for (const d of refs) expect(await index.isLinked('ghcr/org/app', d)).toBe(false);
        await index.link('ghcr/org/app', refs[1]);
        expect(await index.isLinked('ghcr/org/app', refs[1])).toBe(true);
        for (const d of [refs[0], refs[2]]) expect(await index.isLinked('ghcr/org/app', d)).toBe(false);
        for (const d of refs) expect(await index.isLinked('ghcr/org/other', d)).toBe(false);
      });

      it('link() links one blob, idempotently', async () => {
        const d = blobDigest('shared');
        expect(await index.isLinked('quay/org/b', d)).toBe(false);
        await index.link('quay/org/b', d);
        await index.link('quay/org/b', d);
        expect(await index.isLinked('quay/org/b', d)).toBe(true);
        expect(await index.isLinked('quay/org/a', d)).toBe(false);
        expect(await index.isLinked('quay/org', d)).toBe(false);
      });
    });

    describe('fill leases', () => {
      it('acquire → refused to a second owner → re-acquired by its owner → released → taken by the second', async () => {
        const key = blobDigest('lease');
        expect(await index.acquireLease(key, 'owner-a', 60)).toBe(true);
        expect(await index.acquireLease(key, 'owner-b', 60)).toBe(false);
        expect(await index.acquireLease(key, 'owner-a', 60)).toBe(true);
        await index.releaseLease(key, 'owner-b'); // not b's: a no-op
        expect(await index.acquireLease(key, 'owner-b', 60)).toBe(false);
        await index.releaseLease(key, 'owner-a');
        expect(await index.acquireLease(key, 'owner-b', 60)).toBe(true);
        expect(await index.acquireLease(key, 'owner-a', 60)).toBe(false);
        await index.releaseLease(blobDigest('never-taken'), 'owner-a'); // no lease: a no-op
      });

      it('keys are independent', async () => {
        expect(await index.acquireLease('k1', 'owner-a', 60)).toBe(true);
        expect(await index.acquireLease('k2', 'owner-b', 60)).toBe(true);
        expect(await index.acquireLease('k1', 'owner-b', 60)).toBe(false);
      });

      it('an expired lease is taken by another owner', async () => {
        expect(await index.acquireLease('expiring', 'owner-a', 1)).toBe(true);
        expect(await index.acquireLease('expiring', 'owner-b', 1)).toBe(false);
        await sleep(1100);
        expect(await index.acquireLease('expiring', 'owner-b', 60)).toBe(true);
        expect(await index.acquireLease('expiring', 'owner-a', 60)).toBe(false);
      });

      it('reads a lease: owner, expiry and the heartbeat stamped when it was taken; nothing once released', async () => {
        expect(await index.getLease('read')).toBeUndefined();
        const before = Date.now();
        expect(await index.acquireLease('read', 'owner-a', 60)).toBe(true);
        const lease = await index.getLease('read');
        expect(lease?.owner).toBe('owner-a');
        expect(lease!.heartbeatAt).toBeGreaterThanOrEqual(before - 1000);
        expect(lease!.heartbeatAt).toBeLessThanOrEqual(Date.now() + 1000);
        expect(lease!.expiresAt - lease!.heartbeatAt).toBe(60_000);
        await index.releaseLease('read', 'owner-a');
        expect(await index.getLease('read')).toBeUndefined();
      });

      it('a heartbeat by the owner moves heartbeatAt and the expiry forward; anyone else\'s heartbeat writes nothing', async () => {
        expect(await index.acquireLease('beat', 'owner-a', 5)).toBe(true);
        const taken = (await index.getLease('beat'))!;
        await sleep(20);
        expect(await index.heartbeatLease('beat', 'owner-b', 600)).toBe(false);
        expect(await index.getLease('beat')).toEqual(taken);
        expect(await index.heartbeatLease('beat', 'owner-a', 60)).toBe(true);
        const beaten = (await index.getLease('beat'))!;
        expect(beaten.owner).toBe('owner-a');
        expect(beaten.heartbeatAt).toBeGreaterThan(taken.heartbeatAt);
        expect(beaten.expiresAt - beaten.heartbeatAt).toBe(60_000);
        await index.releaseLease('beat', 'owner-a');
        expect(await index.heartbeatLease('beat', 'owner-a', 60)).toBe(false); // released: not recreated
        expect(await index.getLease('beat')).toBeUndefined();
      });

      it('a lease whose heartbeat is older than staleSeconds is taken over (one conditional write); a fresh one is not', async () => {
        expect(await index.acquireLease('stale', 'owner-a', 600)).toBe(true);
        // Heartbeat just written: not stale within 60 s, refused.
        expect(await index.acquireLease('stale', 'owner-b', 600, 60)).toBe(false);
        // Without staleSeconds only the expiry counts.
        expect(await index.acquireLease('stale', 'owner-b', 600)).toBe(false);
        // staleSeconds 0: any heartbeat up to now is stale, so b takes it over although it expires in 10 min.
        expect(await index.acquireLease('stale', 'owner-b', 600, 0)).toBe(true);
        expect((await index.getLease('stale'))?.owner).toBe('owner-b');
        // The old owner learns it lost the lease from its next heartbeat, and its release is a no-op.
        expect(await index.heartbeatLease('stale', 'owner-a', 600)).toBe(false);
        await index.releaseLease('stale', 'owner-a');
        expect((await index.getLease('stale'))?.owner).toBe('owner-b');
        expect(await index.acquireLease('stale', 'owner-c', 600, 60)).toBe(false);
      });

      it('exactly one of 10 concurrent owners takes a free lease', async () => {
        const owners = Array.from({ length: 10 }, (_, i) => `owner-${i}`);
        const results = await Promise.all(owners.map((o) => index.acquireLease('contended', o, 60)));
        expect(results.filter(Boolean)).toHaveLength(1);
        const winner = owners[results.indexOf(true)];
        expect(await index.acquireLease('contended', winner, 60)).toBe(true);
      });
    });

    describe('listing cache', () => {
      it('round-trips a listing per repository and key, overwriting it', async () => {
        for (const name of ['r/a', 'r/b']) await index.putTag(tagRecord(name, 'v1')); // listings need content
        expect(await index.getListing('r/a', 'tags?n=2&last=')).toBeUndefined();
        await index.putListing('r/a', 'tags?n=2&last=', '{"items":["a","b"],"next":"b"}');
        await index.putListing('r/b', 'tags?n=2&last=', '{"items":["z"]}');
        expect((await index.getListing('r/a', 'tags?n=2&last='))?.body).toBe('{"items":["a","b"],"next":"b"}');
        await index.putListing('r/a', 'tags?n=2&last=', '{"items":["c"]}');
        const got = await index.getListing('r/a', 'tags?n=2&last=');
        expect(got?.body).toBe('{"items":["c"]}');
        expect(typeof got?.fetchedAt).toBe('number');
        expect((await index.getListing('r/b', 'tags?n=2&last='))?.body).toBe('{"items":["z"]}');
        expect(await index.getListing('r/a', 'referrers/sha256:00')).toBeUndefined();
      });

      it('keeps a listing only for a repository that holds a tag or a manifest', async () => {
        // Any name a client asks about (a public repository upstream the cache never pulled) must not grow the index.
        expect(await index.putListing('r/never-pulled', 'tags', '["a"]')).toBe(false);
        expect(await index.getListing('r/never-pulled', 'tags')).toBeUndefined();
        await index.putTag(tagRecord('r/tagged', 'v1'));
        expect(await index.putListing('r/tagged', 'tags', '["v1"]')).toBe(true);
        expect((await index.getListing('r/tagged', 'tags'))?.body).toBe('["v1"]');
        const m = manifestOf('r/by-digest', 64);
        await index.putManifest(m, []);
        expect(await index.putListing('r/by-digest', `referrers/${m.digest}`, '[]')).toBe(true);
        expect((await index.getListing('r/by-digest', `referrers/${m.digest}`))?.body).toBe('[]');
        // A neighbour's content does not count.
        expect(await index.putListing('r/tagged-not', 'tags', '["x"]')).toBe(false);
      });
    });

    describe('blob records', () => {
      it('get → undefined, put, get → size and commit time', async (ctx) => {
        if (!index.getBlobRecord || !index.putBlobRecord) ctx.skip();
        const d = blobDigest('record');
        expect(await index.getBlobRecord!(d)).toBeUndefined();
        const before = Date.now();
        await index.putBlobRecord!(d, 31_337);
        const rec = await index.getBlobRecord!(d);
        expect(rec?.size).toBe(31_337);
        expect(rec!.committedAt).toBeGreaterThanOrEqual(before - 1000);
        expect(rec!.committedAt).toBeLessThanOrEqual(Date.now() + 1000);
        expect(await index.getBlobRecord!(blobDigest('other'))).toBeUndefined();
      });
    });
  });
}
