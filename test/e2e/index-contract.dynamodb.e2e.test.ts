/**
 * The index ports contract over the DynamoDB adapter, against DynamoDB Local (one JVM for the file, a new table
 * per test), plus what only this adapter has: the large-object split, the item layout and Query paging.
 * The large-object store here is an in-memory Map stand-in; the S3 adapter is another engineer's and has its
 * own contract.
 */
import { DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, it } from 'vitest';
import { sha256Digest } from '../../shared/oci/digest.js';
import { createDynamoDbIndex, createTable, deleteTable, type DynamoDbIndexOptions } from '../../shared/store/dynamodb-index.js';
import type { LargeObjectStore } from '../../shared/store/ports.js';
import { describeIndexContract } from '../contract/index-ports.contract.js';
import { DYNAMODB_LOCAL_CLIENT_CONFIG, startDynamoDbLocal, type DynamoDbLocal } from '../support/dynamodb-local.js';

let ddb: DynamoDbLocal;
let client: DynamoDBClient;
let tables = 0;

beforeAll(async () => {
  ddb = await startDynamoDbLocal();
  console.info(`DynamoDB Local answered ListTables after ${ddb.startMs} ms`);
  client = new DynamoDBClient({ ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint: ddb.endpoint });
});
afterAll(async () => {
  client?.destroy();
  await ddb?.stop();
});

/** An in-memory stand-in for the S3 large-object store (copies in and out, like a real store). */
function mapLargeObjects(): LargeObjectStore & { objects: Map<string, Uint8Array> } {
  const objects = new Map<string, Uint8Array>();
  return {
    objects,
    async putObject(key, bytes) {
      objects.set(key, new Uint8Array(bytes));
    },
    async getObject(key) {
      const b = objects.get(key);
      return b && new Uint8Array(b);
    },
  };
}

async function openTable(options: Omit<DynamoDbIndexOptions, 'client' | 'table'> = {}) {
  const table = `index-${process.pid}-${++tables}`;
  await createTable(client, table);
  const index = createDynamoDbIndex({ client, table, ...options });
  return { table, index, close: () => deleteTable(client, table) };
}

describeIndexContract('DynamoDB Local + Map large objects', async () => {
  const { index, close } = await openTable({ largeObjects: mapLargeObjects() });
  return { index, close };
});

describeIndexContract('DynamoDB Local, small pages, no large objects', async () => {
  // queryLimit 2 makes every listing follow LastEvaluatedKey across many Query pages.
  const { index, close } = await openTable({ queryLimit: 2 });
  return { index, close, largeManifests: false };
});

describe('DynamoDB index: what only this adapter has', () => {
  let t: Awaited<ReturnType<typeof openTable>>;
  let large: ReturnType<typeof mapLargeObjects>;
  const doc = () => DynamoDBDocumentClient.from(client);
  const item = async (pk: string, sk: string) => (await doc().send(new GetCommand({ TableName: t.table, Key: { pk, sk } }))).Item;
  beforeEach(async () => {
    large = mapLargeObjects();
    t = await openTable({ largeObjects: large, inlineLimitBytes: 1000 });
  });
  afterEach(async () => {
    await t.close();
  });

  it('keeps a body up to inlineLimitBytes inside the item, and a larger one under manifests/<algorithm>/<hex>', async () => {
    const small = new Uint8Array(1000).fill(7);
    const big = new Uint8Array(1001).fill(8);
    const smallDigest = sha256Digest(small);
    const bigDigest = sha256Digest(big);
    await t.index.putManifest({ name: 'r/a', digest: smallDigest, mediaType: 'm', size: 1000, body: small }, []);
    await t.index.putManifest({ name: 'r/a', digest: bigDigest, mediaType: 'm', size: 1001, body: big }, []);
    const smallItem = await item('repo#r/a', `manifest#${smallDigest}`);
    expect(Buffer.from(smallItem!.body as Uint8Array).equals(Buffer.from(small))).toBe(true);
    expect(smallItem!.bodyKey).toBeUndefined();
    const bigItem = await item('repo#r/a', `manifest#${bigDigest}`);
    expect(bigItem!.body).toBeUndefined();
    expect(bigItem!.bodyKey).toBe(`manifests/sha256/${bigDigest.slice('sha256:'.length)}`);
    expect([...large.objects.keys()]).toEqual([bigItem!.bodyKey]);
    expect(Buffer.from((await t.index.getManifest('r/a', bigDigest))!.body).equals(Buffer.from(big))).toBe(true);
  });

  it('refuses a large manifest with a clear error when no large-object store is configured, writing nothing', async () => {
    const plain = await openTable();
    try {
      const body = new Uint8Array(400_000);
      const digest = sha256Digest(body);
      await expect(plain.index.putManifest({ name: 'r/big', digest, mediaType: 'm', size: body.length, body }, [sha256Digest('l')]))
        .rejects.toThrow(/over the 350000-byte inline limit, and no large-object store is configured/);
      expect(await plain.index.getManifest('r/big', digest)).toBeUndefined();
      expect(await plain.index.isLinked('r/big', sha256Digest('l'))).toBe(false);
      expect(await plain.index.listRepositories()).toEqual([]);
    } finally {
      await plain.close();
    }
  });

  it('treats a manifest whose large object is gone as a miss', async () => {
    const body = new Uint8Array(5000).fill(1);
    const digest = sha256Digest(body);
    await t.index.putManifest({ name: 'r/a', digest, mediaType: 'm', size: body.length, body }, []);
    large.objects.clear();
    expect(await t.index.getManifest('r/a', digest)).toBeUndefined();
  });

  it('writes the documented item layout (keys, ms times, lease TTL in epoch seconds)', async () => {
    await t.index.putTag({ name: 'r/a', tag: 'v1', digest: sha256Digest('m'), mediaType: 'm', size: 3, fetchedAt: 10, checkedAt: 20 });
    expect(await item('repo#r/a', 'tag#v1')).toMatchObject({ digest: sha256Digest('m'), mediaType: 'm', size: 3, fetchedAt: 10, checkedAt: 20 });
    expect(await item('repos', 'r/a')).toBeDefined();
    await t.index.link('r/a', sha256Digest('b'));
    expect(await item('repo#r/a', `blob#${sha256Digest('b')}`)).toBeDefined();
    await t.index.putBlobRecord(sha256Digest('b'), 42);
    expect(await item(`blob#${sha256Digest('b')}`, 'blob')).toMatchObject({ size: 42 });
    const before = Date.now();
    expect(await t.index.acquireLease(sha256Digest('b'), 'me', 30)).toBe(true);
    const lease = await item(`fill#${sha256Digest('b')}`, 'lease');
    expect(lease!.owner).toBe('me');
    expect(lease!.expiresAt as number).toBeGreaterThanOrEqual(before + 30_000);
    expect(lease!.ttl).toBe(Math.ceil((lease!.expiresAt as number) / 1000));
    const all = await client.send(new ScanCommand({ TableName: t.table }));
    expect(all.Count).toBe(5);
  });

  it('keeps the first committedAt when a blob record is put again', async () => {
    await t.index.putBlobRecord(sha256Digest('b'), 42);
    const first = await t.index.getBlobRecord(sha256Digest('b'));
    await new Promise((r) => setTimeout(r, 5));
    await t.index.putBlobRecord(sha256Digest('b'), 42);
    expect(await t.index.getBlobRecord(sha256Digest('b'))).toEqual(first);
  });

  it('rejects an inline limit that cannot fit a 400 KB item', () => {
    expect(() => createDynamoDbIndex({ client, table: 'x', inlineLimitBytes: 400_000 })).toThrow(RangeError);
  });
});
