/**
 * The lifecycle behaviour suite (test/contract/lifecycle-behaviour.contract.ts) on the AWS backend: DynamoDB Local
 * (a new table per test) and s3rver (a new bucket per test), through the real AWS SDK adapters. "Gone from storage"
 * is read from the bucket's own listing.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll } from 'vitest';
import { createDynamoDbIndex, createTable, deleteTable } from '../../shared/store/dynamodb-index.js';
import { createS3BlobStore } from '../../shared/store/s3-blob-store.js';
import { describeLifecycleBehaviour } from '../contract/lifecycle-behaviour.contract.js';
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

/** Keys under `blobs/` of `bucket`, as digests (every page). */
async function blobObjects(bucket: string): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  for (let page = 0; page < 1000; page++) {
    const res = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'blobs/', ContinuationToken: token }));
    for (const o of res.Contents ?? []) out.push(o.Key!.slice('blobs/'.length).replace('/', ':'));
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
    if (!token) break;
  }
  return out;
}

describeLifecycleBehaviour('DynamoDB Local + s3rver', async () => {
  const table = `lifecycle-${process.pid}-${++n}`;
  const bucket = `lifecycle-${process.pid}-${n}`;
  await Promise.all([createTable(dynamo, table), createBucket(s3, bucket)]);
  const records = createDynamoDbIndex({ client: dynamo, table });
  const blobs = createS3BlobStore({ client: s3, bucket, records, partSizeBytes: 5 * 1024 * 1024 });
  const index = createDynamoDbIndex({ client: dynamo, table, largeObjects: blobs });
  return {
    backend: {
      index,
      blobs,
      async readLocation(url) {
        const res = await fetch(url);
        if (res.status !== 200) throw new Error(`GET ${url} answered ${res.status}`);
        return Buffer.from(await res.arrayBuffer());
      },
      storageObjects: () => blobObjects(bucket),
    },
    storageObjects: () => blobObjects(bucket),
    close: () => deleteTable(dynamo, table),
  };
});
