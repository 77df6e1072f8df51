/**
 * AWS blob store: content-addressed S3 objects `blobs/<algorithm>/<hex>` in one bucket, committed by a
 * `BlobRecords` entry (DynamoDB `pk=blob#<digest>`). A blob exists for clients only once its record exists,
 * and the record is written only after the bytes hashed to the digest (DESIGN.md, "Storage").
 *
 * A write streams the source through a hashing Transform into a lib-storage multipart `Upload`: the upstream is
 * read while up to `queueSize` parts (default 4) upload in parallel, so reading and writing overlap, and memory
 * stays bounded (about `part size × (queueSize + 1)`: one part per uploader plus the part being cut) whatever the
 * blob size. The digest and size are checked when the source ends, *before* the last part is sent and
 * CompleteMultipartUpload is called: on a mismatch the upload fails and is aborted, so wrong bytes never become
 * an object (and never overwrite a committed blob written by an earlier fill).
 *
 * Parts are sized for the blob ({@link partSizeFor}): S3's smallest part (5 MiB) while that fits the blob in
 * 10,000 parts — small parts mean more of a blob uploads in parallel — else the blob's size / 10,000 rounded up to
 * a MiB; 8 MiB when the size is unknown (the upstream sent no `Content-Length`). S3 limits
 * (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html): a part is 5 MiB–5 GiB (the last one may be
 * smaller), at most 10,000 parts, objects ≤ 5 TiB; so a blob of known size may be up to 5 TiB, one of unknown size
 * up to 80,000 MiB (≈ 78 GiB); a fixed `partSizeBytes` limits every blob to `partSizeBytes × 10,000`. A blob no
 * larger than one part goes up with a single PutObject. Incomplete multipart uploads left by a crashed writer are
 * invisible (no object, no record) and removed by the bucket's lifecycle rule after a day.
 *
 * Clients fetch a blob with a presigned GetObject URL (SigV4 query signature, `host` the only signed header),
 * so `Range` requests work on it unchanged.
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { Transform, pipeline, type Readable } from 'node:stream';
import { hasherFor, parseDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { BlobReaper, BlobRecords, BlobStore, LargeObjectStore } from './ports.js';
import { createS3BlobReaper } from './s3-blob-reaper.js';
import { createS3LargeObjects } from './s3-large-objects.js';

/** S3's smallest part (bytes) for every part of a multipart upload but the last. */
export const S3_MIN_PART_BYTES = 5 * 1024 * 1024;
/** S3's largest part (bytes). */
export const S3_MAX_PART_BYTES = 5 * 1024 * 1024 * 1024;
/** S3's largest number of parts in one multipart upload. */
export const S3_MAX_PARTS = 10_000;
/** Part size (bytes) for a blob of unknown size: 8 MiB, so blobs up to 80,000 MiB (≈ 78 GiB). */
export const DEFAULT_PART_BYTES = 8 * 1024 * 1024;
/** S3's largest object (bytes): 5 TiB. */
export const S3_MAX_OBJECT_BYTES = 5 * 1024 ** 4;
/** Parts uploaded at once per write, by default. */
export const DEFAULT_QUEUE_SIZE = 4;

/**
 * The part size (bytes) for a blob of `size` bytes (undefined: unknown): the smallest that S3 accepts and that fits
 * the blob in 10,000 parts, in whole MiB; {@link DEFAULT_PART_BYTES} for an unknown size.
 */
export function partSizeFor(size: number | undefined): number {
  if (size === undefined) return DEFAULT_PART_BYTES;
  const MiB = 1024 * 1024;
  return Math.max(S3_MIN_PART_BYTES, Math.ceil(size / S3_MAX_PARTS / MiB) * MiB);
}

/** Options of {@link createS3BlobStore}. */
export interface S3BlobStoreOptions {
  client: S3Client;
  bucket: string;
  /** The commit point: a blob is visible only once its record exists. */
  records: BlobRecords;
  /**
   * A fixed multipart part size in bytes, at least 5 MiB (S3's minimum); the largest writable blob is then
   * `partSizeBytes × 10,000` bytes. Default: sized for each blob ({@link partSizeFor}).
   */
  partSizeBytes?: number;
  /** Parts uploaded concurrently per write; default 4. Memory per write ≈ `part size × (queueSize + 1)`. */
  queueSize?: number;
  /** Lifetime of presigned GET URLs in seconds; default 900. */
  urlTtlSeconds?: number;
}

/** S3 key of a blob: `blobs/<algorithm>/<hex>`. */
export function blobKey(digest: Digest): string {
  const { algorithm, encoded } = parseDigest(digest)!;
  return `blobs/${algorithm}/${encoded}`;
}

/**
 * Creates the S3 blob store (plus the `LargeObjectStore` for manifests too large for a DynamoDB item).
 * @throws Error when `partSizeBytes` is outside 5 MiB–5 GiB or `queueSize` < 1 (configuration errors).
 * `write` throws a plain Error (not a RegistryError) when `expectedSize` exceeds `partSizeBytes × 10,000`.
 */
export function createS3BlobStore(opts: S3BlobStoreOptions): BlobStore & LargeObjectStore & BlobReaper {
  const { client, bucket, records } = opts;
  const fixedPartSize = opts.partSizeBytes;
  const queueSize = opts.queueSize ?? DEFAULT_QUEUE_SIZE;
  const urlTtlSeconds = opts.urlTtlSeconds ?? 900;
  if (fixedPartSize !== undefined && (!Number.isInteger(fixedPartSize) || fixedPartSize < S3_MIN_PART_BYTES)) {
    throw new Error(`partSizeBytes must be an integer ≥ ${S3_MIN_PART_BYTES} (S3's minimum part size), got ${fixedPartSize}`);
  }
  if (fixedPartSize !== undefined && fixedPartSize > S3_MAX_PART_BYTES) throw new Error(`partSizeBytes must be ≤ ${S3_MAX_PART_BYTES} (S3's maximum part size), got ${fixedPartSize}`);
  if (!Number.isInteger(queueSize) || queueSize < 1) throw new Error(`queueSize must be an integer ≥ 1, got ${queueSize}`);

  return {
    ...createS3BlobReaper({ client, bucket, records, blobKey }),
    ...createS3LargeObjects(client, bucket),

    async stat(digest) {
      const record = await records.getBlobRecord(digest);
      return record && { size: record.size };
    },

    async write(digest, source: Readable, expectedSize) {
      const { algorithm } = parseDigest(digest)!;
      const key = blobKey(digest);
      const partSize = fixedPartSize ?? partSizeFor(expectedSize);
      const maxBlobBytes = Math.min(partSize * S3_MAX_PARTS, S3_MAX_OBJECT_BYTES);
      if (expectedSize !== undefined && expectedSize > maxBlobBytes) {
        source.destroy();
        throw new Error(`blob of ${expectedSize} bytes exceeds this store's limit of ${maxBlobBytes} bytes (part size × ${S3_MAX_PARTS} parts, or S3's 5 TiB)`);
      }
      const hash = hasherFor(digest);
      let size = 0;
      let verified = false;
      const tap = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          size += chunk.length;
          if (expectedSize !== undefined && size > expectedSize) return cb(new RegistryError('SIZE_INVALID', 'blob is larger than its descriptor'));
          hash.update(chunk);
          cb(null, chunk);
        },
        // Runs when the source ended, before lib-storage sends the last part and completes the upload.
        flush(cb) {
          if (expectedSize !== undefined && size !== expectedSize) return cb(new RegistryError('SIZE_INVALID', 'blob size does not match its descriptor'));
          const actual = `${algorithm}:${hash.digest('hex')}`;
          if (actual !== digest) return cb(new RegistryError('DIGEST_INVALID', 'upstream blob did not match its digest', { status: 502 }));
          verified = true;
          cb();
        },
      });
      const upload = new Upload({
        client,
        params: { Bucket: bucket, Key: key, Body: tap, ContentType: 'application/octet-stream' },
        partSize,
        queueSize,
        leavePartsOnError: false,
      });
      // The first error of the source or the tap (the source's own error, SIZE_INVALID, DIGEST_INVALID).
      let streamError: Error | undefined;
      let stoppedByUs = false;
      const piped = new Promise<void>((done) =>
        pipeline(source, tap, (err) => {
          if (err && !stoppedByUs) streamError = err;
          done();
        }),
      );
      try {
        await upload.done();
      } catch (uploadError) {
        // lib-storage has already tried AbortMultipartUpload; if that failed too, its error replaces the
        // original one, so the stream's own error (when there is one) is what the caller gets.
        if (!tap.destroyed) {
          stoppedByUs = true;
          tap.destroy();
        }
        await piped;
        throw streamError ?? uploadError;
      }
      await piped;
      if (!verified) {
        // Unreachable while lib-storage reads the tap to its end (flush() runs before 'end'); kept so that a
        // change there can never commit unverified bytes.
        await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
        throw streamError ?? new RegistryError('DIGEST_INVALID', 'blob was stored without being verified', { status: 502 });
      }
      await records.putBlobRecord(digest, size);
      return { size };
    },

    async locate(digest) {
      const url = await getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: blobKey(digest) }), { expiresIn: urlTtlSeconds });
      return { kind: 'redirect', url };
    },
  };
}
