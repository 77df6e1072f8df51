/**
 * The lifecycle behaviour suite (test/contract/lifecycle-behaviour.contract.ts) on the AWS backend: DynamoDB Local
 * (a new table per test) and s3rver (a new bucket per test), through the real AWS SDK adapters. "Gone from storage"
 * is read from the bucket's own listing.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createDynamoDbIndex, createTable, deleteTable } from '../../shared/store/dynamodb-index.js';
import { createS3BlobStore } from '../../shared/store/s3-blob-store.js';
import { describeLifecycleBehaviour } from '../contract/lifecycle-behaviour.contract.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { pullImage, storeProblems } from '../support/lifecycle-checks.js';
import { DYNAMODB_LOCAL_CLIENT_CONFIG, startDynamoDbLocal, type DynamoDbLocal } from '../support/dynamodb-local.js';
import { createBucket, s3ClientFor, startS3rver, type S3rverInstance } from '../support/s3rver.js';

let ddb: DynamoDbLocal;
let dynamo: DynamoDBClient;
let s3rver: S3rverInstance;
let s3: S3Client;
let n = 0;

beforeAll(async () => {
  [ddb, s3rver] = await Promise.all([startDynamoDbLocal(), startS3rver()]);
  dynamo = new DynamoDBClient({ ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint: ddb.endpoint });
  s3 = s3ClientFor(s3rver.endpoint);
});
afterAll(async () => {
  dynamo?.destroy();
  s3?.destroy();
  await ddb?.stop();
  await s3rver?.stop();
});

/** Keys under `prefix` (`blobs/`, `manifests/`) of `bucket`, as digests (every page). */
async function blobObjects(bucket: string, prefix = 'blobs/'): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  for (let page = 0; page < 1000; page++) {
    const res = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of res.Contents ?? []) out.push(o.Key!.slice(prefix.length).replace('/', ':'));
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
    if (!token) break;
  }
  return out;
}

/** A new table and bucket; manifests over `inlineLimitBytes` go to the bucket's `manifests/`. */
async function openBackend(inlineLimitBytes?: number) {
  const table = `lifecycle-${process.pid}-${++n}`;
  const bucket = `lifecycle-${process.pid}-${n}`;
  await Promise.all([createTable(dynamo, table), createBucket(s3, bucket)]);
  const records = createDynamoDbIndex({ client: dynamo, table });
  const blobs = createS3BlobStore({ client: s3, bucket, records, partSizeBytes: 5 * 1024 * 1024 });
  const index = createDynamoDbIndex({ client: dynamo, table, largeObjects: blobs, ...(inlineLimitBytes ? { inlineLimitBytes } : {}) });
  return {
    backend: {
      index,
      blobs,
      async readLocation(url: string) {
        const res = await fetch(url);
        if (res.status !== 200) throw new Error(`GET ${url} answered ${res.status}`);
        return Buffer.from(await res.arrayBuffer());
      },
      storageObjects: () => blobObjects(bucket),
    },
    storageObjects: () => blobObjects(bucket),
    manifestBodies: () => blobObjects(bucket, 'manifests/'),
    close: () => deleteTable(dynamo, table),
  };
}

describeLifecycleBehaviour('DynamoDB Local + s3rver', () => openBackend());

describe('large manifest bodies in S3 (manifests/, shared by digest)', () => {
  let up: FakeUpstream;
  let fixture: Awaited<ReturnType<typeof openBackend>>;
  let h: Awaited<ReturnType<typeof createHarness>>;
  beforeEach(async () => {
    up = await startFakeUpstream();
    fixture = await openBackend(300); // every manifest of this test is larger: its body goes to S3
  });
  afterEach(async () => {
    h?.close();
    await fixture.close();
    await up.close();
  });

  it("a purged image's body stays while another repository stores the same manifest; past the grace period GC deletes the unshared ones", async () => {
    h = await createHarness([{ prefix: 'local', upstream: up.url, ttlSeconds: 30 * 24 * 3600 }], { backend: fixture.backend });
    const read = fixture.backend.readLocation;
    const layers = [Buffer.alloc(5000, 'p'), Buffer.alloc(5000, 'q')];
    const a = seedImage(up, 'a', 'v1', layers);
    const b = seedImage(up, 'b', 'v1', layers); // the same manifest (same bytes, same digest) under another name
    const c = seedImage(up, 'c', 'v1', [Buffer.alloc(5000, 'r')]);
    expect(b.digest).toBe(a.digest);
    for (const r of ['a', 'b', 'c']) await pullImage(h, `local/${r}`, 'v1', read);
    expect((await fixture.manifestBodies()).sort()).toEqual([a.digest, c.digest].sort());
    await h.lifecycle.purge('local/a');
    await h.lifecycle.purge('local/c');
    expect((await h.lifecycle.gc()).removedObjects).toBe(0); // within the grace period
    expect((await fixture.manifestBodies()).sort()).toEqual([a.digest, c.digest].sort());
    h.clock.now += 2 * 3600 * 1000;
    expect(await h.lifecycle.gc()).toMatchObject({ complete: true, removedObjects: 3 }); // c's body, its config and layer
    expect(await fixture.manifestBodies()).toEqual([a.digest]);
    up.faults.down = true;
    await pullImage(h, 'local/b', 'v1', read);
    expect(await storeProblems(fixture.backend.index, fixture.backend.blobs)).toEqual([]);
    up.faults.down = false;
    await pullImage(h, 'local/c', 'v1', read); // an ordinary miss refills it, body included
    expect((await fixture.manifestBodies()).sort()).toEqual([a.digest, c.digest].sort());
  });
});
