/**
 * The BlobStore contract against the S3 store, on s3rver (a child process; see test/support/s3rver.ts).
 * `fetchLocation` is a real `fetch` of the presigned GET URL, Range header included (s3rver does not check
 * presigned signatures; the URL's only signed header is `host`, so a Range header is accepted by real S3 too).
 * The commit records are an in-memory Map: the DynamoDB `BlobRecords` adapter is another engineer's and has
 * its own contract suite.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import type { BlobRecords } from '../../shared/store/ports.js';
import { createS3BlobStore, DEFAULT_PART_BYTES, partSizeFor, S3_MIN_PART_BYTES } from '../../shared/store/s3-blob-store.js';
import { describeBlobStoreContract } from '../contract/blob-store.contract.js';
import { memoryBlobRecords } from '../support/memory-blob-records.js';
import { createBucket, s3ClientFor, startS3rver, type S3rverInstance } from '../support/s3rver.js';

describeBlobStoreContract('S3 (s3rver)', async () => {
  const s3rver = await startS3rver();
  const client = s3ClientFor(s3rver.endpoint);
  const bucket = 'pullthrough-contract';
  await createBucket(client, bucket);
  // The smallest part S3 allows, so the 12 MiB blob goes up in 3 parts and the 6 MiB failures mid-upload.
  const store = createS3BlobStore({ client, bucket, records: memoryBlobRecords(), partSizeBytes: S3_MIN_PART_BYTES });
  return {
    store,
    async fetchLocation(url, headers = {}) {
      const res = await fetch(url, { headers });
      return { status: res.status, body: Buffer.from(await res.arrayBuffer()), headers: res.headers };
    },
    async listObjects() {
      const keys: string[] = [];
      let token: string | undefined;
      for (let page = 0; page < 1000; page++) {
        const res = await client.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
        keys.push(...(res.Contents ?? []).map((o) => o.Key!));
        token = res.NextContinuationToken;
        if (!res.IsTruncated || !token) break;
      }
      return keys;
    },
    async close() {
      client.destroy();
      await s3rver.stop();
    },
  };
});

describe('S3 blob store specifics (s3rver)', () => {
  let s3rver: S3rverInstance;
  let client: S3Client;
  const bucket = 'pullthrough-specifics';
  /** Names of the S3 commands sent, in order (SDK middleware). */
  const sent: string[] = [];

  beforeAll(async () => {
    s3rver = await startS3rver();
    client = s3ClientFor(s3rver.endpoint);
    client.middlewareStack.add(
      (next, context) => (args) => {
        sent.push(context.commandName ?? '?');
        return next(args);
      },
      { step: 'initialize', name: 'recordCommands' },
    );
    await createBucket(client, bucket);
  });
  afterAll(async () => {
    client?.destroy();
    await s3rver?.stop();
  });

  const open = (records = memoryBlobRecords()) => createS3BlobStore({ client, bucket, records, partSizeBytes: S3_MIN_PART_BYTES });
  const digestOf = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;

  it('stat reads only the commit record, never S3', async () => {
    const records = memoryBlobRecords();
    const store = open(records);
    const digest = digestOf(randomBytes(8));
    await records.putBlobRecord(digest, 8);
    sent.length = 0;
    expect(await store.stat(digest)).toEqual({ size: 8 });
    expect(await store.stat(digestOf(randomBytes(8)))).toBeUndefined();
    expect(sent).toEqual([]);
  });

  it('uploads a 12 MiB blob as 3 parts of at most 5 MiB and commits the record after the upload', async () => {
    const order: string[] = [];
    const records = memoryBlobRecords();
    const store = open({
      ...records,
      async putBlobRecord(digest, size) {
        order.push(...sent, 'putBlobRecord');
        await records.putBlobRecord(digest, size);
      },
    });
    const bytes = randomBytes(12 * 1024 * 1024);
    sent.length = 0;
    await store.write(digestOf(bytes), Readable.from([bytes]), bytes.length);
    expect(order).toEqual(['CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand', 'putBlobRecord']);
  });

  it('sizes parts for the blob by default: 12 MiB in 3 parts of 5 MiB (S3\'s minimum); 5 TiB at most', async () => {
    const store = createS3BlobStore({ client, bucket, records: memoryBlobRecords() });
    const bytes = randomBytes(12 * 1024 * 1024);
    sent.length = 0;
    await store.write(digestOf(bytes), Readable.from([bytes]), bytes.length);
    expect(sent).toEqual(['CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand']);
    expect([0, 1024 ** 3, 48 * 1024 ** 3, 100 * 1024 ** 3, 5 * 1024 ** 4].map((n) => partSizeFor(n) / 2 ** 20)).toEqual([5, 5, 5, 11, 525]);
    expect(partSizeFor(undefined)).toBe(DEFAULT_PART_BYTES);
    // Sized parts take any blob S3 can hold (5 TiB), refused beyond that before anything is sent.
    sent.length = 0;
    await expect(store.write(digestOf(Buffer.from('x')), Readable.from([Buffer.from('x')]), 5 * 1024 ** 4 + 1)).rejects.toThrow(/exceeds/);
    expect(sent).toEqual([]);
  });

  it('sends a blob of at most one part with a single PutObject', async () => {
    const bytes = randomBytes(1024 * 1024);
    sent.length = 0;
    await open().write(digestOf(bytes), Readable.from([bytes]));
    expect(sent).toEqual(['PutObjectCommand']);
  });

  it('never completes an upload whose bytes do not match (checked before the last part)', async () => {
    const bytes = randomBytes(11 * 1024 * 1024);
    const claimed = digestOf(randomBytes(1));
    sent.length = 0;
    await expect(open().write(claimed, Readable.from([bytes]))).rejects.toMatchObject({ code: 'DIGEST_INVALID', status: 502 });
    expect(sent).not.toContain('CompleteMultipartUploadCommand');
    expect(sent).not.toContain('PutObjectCommand');
    // lib-storage tries to abort the multipart upload (s3rver answers 405; real S3 drops the parts).
    expect(sent.at(-1)).toBe('AbortMultipartUploadCommand');
  });

  it('hands out presigned GET URLs that sign only the host header and expire after urlTtlSeconds', async () => {
    const store = createS3BlobStore({ client, bucket, records: memoryBlobRecords(), urlTtlSeconds: 120 });
    const digest = digestOf(Buffer.from('x'));
    const { url } = await store.locate(digest);
    const u = new URL(url);
    expect(u.pathname).toBe(`/${bucket}/blobs/sha256/${digest.slice('sha256:'.length)}`);
    expect(u.searchParams.get('X-Amz-SignedHeaders')).toBe('host');
    expect(u.searchParams.get('X-Amz-Expires')).toBe('120');
  });

  it('stores and reads large objects (manifests); a missing key reads as undefined', async () => {
    const store = open();
    const bytes = new Uint8Array(randomBytes(500 * 1024));
    await store.putObject('manifests/sha256/abc', bytes);
    expect(Buffer.from((await store.getObject('manifests/sha256/abc'))!).equals(bytes)).toBe(true);
    expect(await store.getObject('manifests/sha256/missing')).toBeUndefined();
    await expect(store.putObject('blobs/sha256/abc', bytes)).rejects.toThrow(/invalid large-object key/);
  });

  it('large objects: HEAD, paged listing in key order after a key (size, last write), delete; never under blobs/', async () => {
    const store = open();
    const p = 'manifests/sha512/'; // a prefix no other test of this bucket writes
    const before = Date.now() - 60_000;
    for (const k of ['b', 'a', 'c']) await store.putObject(`${p}${k}`, new Uint8Array(k.charCodeAt(0)));
    expect(await store.hasObject(`${p}a`)).toBe(true);
    expect(await store.hasObject(`${p}zz`)).toBe(false);
    const listed = [];
    for await (const o of store.listObjects(p, `${p}a`)) listed.push(o);
    expect(listed.map((o) => [o.key, o.size])).toEqual([[`${p}b`, 98], [`${p}c`, 99]]);
    for (const o of listed) expect(o.modified).toBeGreaterThan(before);
    await store.deleteObject(`${p}b`);
    await store.deleteObject(`${p}missing`); // a no-op
    const keys = [];
    for await (const o of store.listObjects(p)) keys.push(o.key);
    expect(keys).toEqual([`${p}a`, `${p}c`]);
    await expect(store.deleteObject('blobs/sha256/abc')).rejects.toThrow(/invalid large-object key/);
  });

  it('refuses a blob larger than part size × 10,000 parts before sending anything', async () => {
    sent.length = 0;
    const tooBig = S3_MIN_PART_BYTES * 10_000 + 1;
    await expect(open().write(digestOf(Buffer.from('x')), Readable.from([Buffer.from('x')]), tooBig)).rejects.toThrow(/exceeds/);
    expect(sent).toEqual([]);
  });

  it('refuses a part size below S3 minimum of 5 MiB', () => {
    expect(() => createS3BlobStore({ client, bucket, records: memoryBlobRecords(), partSizeBytes: S3_MIN_PART_BYTES - 1 })).toThrow(/partSizeBytes/);
  });
});
