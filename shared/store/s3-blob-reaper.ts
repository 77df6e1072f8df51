/**
 * The S3 blob store's {@link BlobReaper} (the garbage collector's view of blob storage): objects `blobs/<alg>/<hex>`
 * listed in key order (ListObjectsV2, 1,000 per page, resumable with `StartAfter`), each with the state of its
 * DynamoDB record (committed, tombstone = unpublished, none = orphan). Unpublishing turns the record into a
 * tombstone and leaves the object, so presigned URLs handed out before keep working; the object goes only with
 * {@link BlobReaper.removeBlobObject}, which the GC calls after the grace period, holding the digest's fill lease
 * (so no refill uploads the same key meanwhile). The tombstone is deleted before the object: a crash between the
 * two leaves an orphan object, which the next pass finds in the listing and removes.
 */
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import { isDigest, type Digest } from '../oci/digest.js';
import type { BlobReaper, BlobRecords, StoredBlob } from './ports.js';

/** The reaper over `bucket`; `blobKey` gives a digest's object key. */
export function createS3BlobReaper(opts: { client: S3Client; bucket: string; records: BlobRecords; blobKey(digest: Digest): string }): BlobReaper {
  const { client, bucket, records, blobKey } = opts;
  const Bucket = bucket;

  /** The stored blob of an object of `size` bytes last modified at `modified` (ms), from its record. */
  async function stateOf(digest: Digest, size: number, modified: number): Promise<StoredBlob> {
    const record = await records.getBlobRecordState(digest);
    if (!record) return { digest, size, state: 'orphan', since: modified };
    if (record.unpublishedAt !== undefined) return { digest, size, state: 'unpublished', since: record.unpublishedAt };
    return { digest, size: record.size, state: 'committed', since: record.committedAt };
  }

  const digestOfKey = (key: string): Digest | undefined => {
    const m = /^blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(key);
    const digest = m ? `${m[1]}:${m[2]}` : '';
    return isDigest(digest) ? digest : undefined;
  };

  return {
    async *listStoredBlobs(after) {
      let token: string | undefined;
      for (let page = 0; page < 10_000_000; page++) {
        const res = await client.send(new ListObjectsV2Command({
          Bucket, Prefix: 'blobs/', MaxKeys: 1000, ...(token ? { ContinuationToken: token } : after ? { StartAfter: blobKey(after) } : {}),
        }));
        for (const o of res.Contents ?? []) {
          const digest = o.Key ? digestOfKey(o.Key) : undefined;
          if (digest) yield await stateOf(digest, o.Size ?? 0, o.LastModified?.getTime() ?? 0);
        }
        token = res.IsTruncated ? res.NextContinuationToken : undefined;
        if (!token) break;
      }
    },

    async storedBlob(digest) {
      try {
        const head = await client.send(new HeadObjectCommand({ Bucket, Key: blobKey(digest) }));
        return await stateOf(digest, head.ContentLength ?? 0, head.LastModified?.getTime() ?? 0);
      } catch (err) {
        if ((err as { name?: string }).name === 'NotFound' || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
        throw err;
      }
    },

    unpublishBlob: (digest, at) => records.unpublishBlobRecord(digest, at),
    republishBlob: (digest) => records.republishBlobRecord(digest),

    async removeBlobObject(digest) {
      // Never the object of a committed blob (a refill re-committed it): the caller holds the lease, this checks.
      if (await records.getBlobRecord(digest)) return;
      await records.deleteBlobRecord(digest, { onlyUnpublished: true });
      await client.send(new DeleteObjectCommand({ Bucket, Key: blobKey(digest) }));
    },

    async readBlob(digest) {
      if (!(await records.getBlobRecord(digest))) return undefined;
      const res = await client.send(new GetObjectCommand({ Bucket, Key: blobKey(digest) }));
      return res.Body as Readable | undefined;
    },

    async dropBlob(digest) {
      await records.deleteBlobRecord(digest, { onlyUnpublished: false });
      await client.send(new DeleteObjectCommand({ Bucket, Key: blobKey(digest) }));
    },
  };
}
