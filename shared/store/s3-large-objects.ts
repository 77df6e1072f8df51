/**
 * The S3 {@link LargeObjectStore}: manifests too large for a DynamoDB item, as objects `manifests/<alg>/<hex>` in
 * the blob bucket. Keys never reach into `blobs/`, whose objects are written only after hashing (s3-blob-store.ts).
 * Listing is ListObjectsV2, 1,000 keys per page, resumable with `StartAfter`.
 */
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, NoSuchKey, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { LargeObjectStore } from './ports.js';

/** The large-object store over `bucket`. */
export function createS3LargeObjects(client: S3Client, bucket: string): LargeObjectStore {
  const Bucket = bucket;
  const notFound = (err: unknown) =>
    err instanceof NoSuchKey || ['NoSuchKey', 'NotFound'].includes((err as Error).name) || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404;
  return {
    async putObject(key, bytes) {
      assertObjectKey(key);
      await client.send(new PutObjectCommand({ Bucket, Key: key, Body: bytes, ContentType: 'application/octet-stream' }));
    },

    async getObject(key) {
      assertObjectKey(key);
      try {
        const res = await client.send(new GetObjectCommand({ Bucket, Key: key }));
        return res.Body ? await res.Body.transformToByteArray() : new Uint8Array();
      } catch (err) {
        if (notFound(err)) return undefined;
        throw err;
      }
    },

    async hasObject(key) {
      assertObjectKey(key);
      try {
        await client.send(new HeadObjectCommand({ Bucket, Key: key }));
        return true;
      } catch (err) {
        if (notFound(err)) return false;
        throw err;
      }
    },

    async deleteObject(key) {
      assertObjectKey(key);
      await client.send(new DeleteObjectCommand({ Bucket, Key: key }));
    },

    async *listObjects(prefix, after) {
      assertObjectKey(prefix);
      let token: string | undefined;
      for (let page = 0; page < 10_000_000; page++) {
        const res = await client.send(new ListObjectsV2Command({
          Bucket, Prefix: prefix, MaxKeys: 1000, ...(token ? { ContinuationToken: token } : after ? { StartAfter: after } : {}),
        }));
        for (const o of res.Contents ?? []) if (o.Key) yield { key: o.Key, size: o.Size ?? 0, modified: o.LastModified?.getTime() ?? 0 };
        token = res.IsTruncated ? res.NextContinuationToken : undefined;
        if (!token) break;
      }
    },
  };
}

/** `LargeObjectStore` keys never reach into `blobs/`. */
function assertObjectKey(key: string): void {
  if (key === '' || key.startsWith('blobs/')) throw new Error(`invalid large-object key ${JSON.stringify(key.slice(0, 200))}`);
}
