/**
 * The index ports contract over the DynamoDB adapter, against DynamoDB Local (one JVM for the file, a new table
 * per test), plus what only this adapter has: the large-object split, the item layout and Query paging.
 * The large-object store here is an in-memory Map stand-in; the S3 adapter is another engineer's and has its
 * own contract.
 */
import { DescribeTableCommand, DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import { DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, it } from 'vitest';
import { sha256Digest } from '../../shared/oci/digest.js';
import {
  DUE_INDEX, DUE_SHARDS, TABLE_KEY_SCHEMA, createDynamoDbIndex, createTable, deleteTable, dueShardOf, type DynamoDbIndexOptions,
} from '../../shared/store/dynamodb-index.js';
import type { LargeObjectStore } from '../../shared/store/ports.js';
import { describeIndexContract } from '../contract/index-ports.contract.js';
import { describeLifecycleIndexContract } from '../contract/lifecycle-index.contract.js';
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

/**
 * An in-memory stand-in for the S3 large-object store (copies in and out, like a real store); `clock.now` (ms)
 * stamps each object's last write.
 */
function mapLargeObjects(clock = { now: 0 }): LargeObjectStore & { objects: Map<string, Uint8Array>; modified: Map<string, number> } {
  const objects = new Map<string, Uint8Array>();
  const modified = new Map<string, number>();
  return {
    objects,
    modified,
    async putObject(key, bytes) {
      objects.set(key, new Uint8Array(bytes));
      modified.set(key, clock.now);
    },
    async getObject(key) {
      const b = objects.get(key);
      return b && new Uint8Array(b);
    },
    async hasObject(key) {
      return objects.has(key);
    },
    async deleteObject(key) {
      objects.delete(key);
      modified.delete(key);
    },
    async *listObjects(prefix, after) {
      const keys = [...objects.keys()].filter((k) => k.startsWith(prefix) && (after === undefined || k > after)).sort();
      for (const key of keys) if (objects.has(key)) yield { key, size: objects.get(key)!.length, modified: modified.get(key)! };
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

describeLifecycleIndexContract('DynamoDB Local, small pages', async () => {
  const { index, close } = await openTable({ queryLimit: 2, largeObjects: mapLargeObjects() });
  return { index, close };
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

  it('creates the sparse due GSI (dueShard S + dueAt N, projection ALL, on demand)', async () => {
    expect(DUE_INDEX).toBe('due');
    expect(DUE_SHARDS).toBe(8);
    const { Table } = await client.send(new DescribeTableCommand({ TableName: t.table }));
    expect(Table!.AttributeDefinitions).toEqual(expect.arrayContaining([
      { AttributeName: 'dueShard', AttributeType: 'S' }, { AttributeName: 'dueAt', AttributeType: 'N' },
    ]));
    const gsi = Table!.GlobalSecondaryIndexes?.find((g) => g.IndexName === 'due');
    expect(gsi?.KeySchema).toEqual([{ AttributeName: 'dueShard', KeyType: 'HASH' }, { AttributeName: 'dueAt', KeyType: 'RANGE' }]);
    expect(gsi?.Projection).toEqual({ ProjectionType: 'ALL' });
    expect(TABLE_KEY_SCHEMA.GlobalSecondaryIndexes[0]).not.toHaveProperty('ProvisionedThroughput');
  });

  it('writes dueAt + dueShard only on due tags, keeps them in step through recordCheck, and removes both', async () => {
    const base = { digest: sha256Digest('m'), mediaType: 'm', size: 3, fetchedAt: 10, checkedAt: 20 };
    await t.index.putTag({ name: 'r/a', tag: 'v1', ...base, dueAt: 1000, lastCheck: { at: 20, result: 'unchanged' } });
    await t.index.putTag({ name: 'r/a', tag: 'v2', ...base });
    expect(await item('repo#r/a', 'tag#v1')).toMatchObject({
      dueAt: 1000, dueShard: dueShardOf('r/a', 'v1'), lastCheck: { at: 20, result: 'unchanged' },
    });
    expect(dueShardOf('r/a', 'v1')).toMatch(/^due#[0-7]$/);
    const v2 = await item('repo#r/a', 'tag#v2');
    expect(v2).not.toHaveProperty('dueAt');
    expect(v2).not.toHaveProperty('dueShard');
    expect(v2).not.toHaveProperty('lastCheck');

    await t.index.recordCheck('r/a', 'v2', { checkedAt: 30, dueAt: 2000, lastCheck: { at: 30, result: 'moved' } });
    expect(await item('repo#r/a', 'tag#v2')).toMatchObject({ checkedAt: 30, dueAt: 2000, dueShard: dueShardOf('r/a', 'v2') });
    await t.index.recordCheck('r/a', 'v1', { checkedAt: 40, lastCheck: { at: 40, result: 'error', error: 'x' } });
    const v1 = await item('repo#r/a', 'tag#v1');
    expect(v1).toMatchObject({ checkedAt: 40, lastCheck: { at: 40, result: 'error', error: 'x' }, digest: base.digest });
    expect(v1).not.toHaveProperty('dueAt');
    expect(v1).not.toHaveProperty('dueShard');
    // The sparse GSI holds the due tag only.
    const indexed = await client.send(new ScanCommand({ TableName: t.table, IndexName: 'due' }));
    expect(indexed.Items?.map((i) => i.sk.S)).toEqual(['tag#v2']);
  });

  it('listDueTags queries the due GSI, once per shard, never a Scan, and pages per shard', async () => {
    const calls: Array<{ command: string; indexName?: string; shard?: string; limit?: number }> = [];
    const recording = new DynamoDBClient({ ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint: ddb.endpoint });
    recording.middlewareStack.add((next, context) => async (args) => {
      const input = args.input as { IndexName?: string; Limit?: number; ExpressionAttributeValues?: Record<string, unknown> };
      // The document client may hand the values over marshalled ({ S: '…' }) or not, depending on step order.
      const s = input.ExpressionAttributeValues?.[':s'] as string | { S?: string } | undefined;
      calls.push({
        command: context.commandName ?? '?', indexName: input.IndexName, shard: typeof s === 'string' ? s : s?.S, limit: input.Limit,
      });
      return next(args);
    }, { step: 'initialize', name: 'recordCommands' });
    try {
      const index = createDynamoDbIndex({ client: recording, table: t.table, queryLimit: 2 });
      const now = 1_750_000_000_000;
      const shards = new Set<string>();
      for (let j = 0; j < 40; j++) {
        await index.putTag({
          name: `ghcr/team${j % 8}/svc`, tag: `t${j}`, digest: sha256Digest(`m${j}`), mediaType: 'm', size: 1, fetchedAt: 1,
          checkedAt: 1, dueAt: now - 100_000 + ((j * 17) % 40) * 1000,
        });
        shards.add(dueShardOf(`ghcr/team${j % 8}/svc`, `t${j}`));
      }
      expect(shards.size).toBeGreaterThanOrEqual(6); // the 40 tags really are spread over shards
      calls.length = 0;
      const due = await index.listDueTags(now, 15);
      expect(due.map((r) => r.dueAt)).toEqual(Array.from({ length: 15 }, (_, k) => now - 100_000 + k * 1000));
      expect(calls.map((c) => c.command)).not.toContain('ScanCommand');
      expect(calls.every((c) => c.command === 'QueryCommand' && c.indexName === 'due')).toBe(true);
      expect(new Set(calls.map((c) => c.shard))).toEqual(new Set(Array.from({ length: DUE_SHARDS }, (_, k) => `due#${k}`)));
      expect(calls.every((c) => c.limit! <= 2)).toBe(true); // queryLimit 2: shards with more than 2 due tags paged
      expect(calls.length).toBeGreaterThan(DUE_SHARDS);
      expect(calls.filter((c) => c.command === 'GetItemCommand')).toEqual([]); // the GSI projects ALL: no extra reads
    } finally {
      recording.destroy();
    }
  });

  it('dropping an emptied repository puts its marker back when a fill wrote a tag while the marker was being deleted', async () => {
    const name = 'r/raced';
    const tagItem = { pk: `repo#${name}`, sk: 'tag#v1', digest: sha256Digest('m'), mediaType: 'm', size: 3, fetchedAt: 1, checkedAt: 1 };
    await t.index.putTag({ name, tag: 'v0', digest: sha256Digest('m'), mediaType: 'm', size: 3, fetchedAt: 1, checkedAt: 1 });
    await t.index.deleteTag(name, 'v0');
    // The fill's tag lands right after the lifecycle's DeleteItem of the marker (written raw: no marker of its own,
    // as when the fill's marker write happened before the delete).
    const racing = new DynamoDBClient({ ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint: ddb.endpoint });
    let raced = false;
    racing.middlewareStack.add((next, context) => async (args) => {
      const out = await next(args);
      const input = args.input as { Key?: { pk?: { S?: string } | string } };
      const pk = input.Key?.pk;
      if (!raced && context.commandName === 'DeleteItemCommand' && (pk === 'repos' || (typeof pk === 'object' && pk.S === 'repos'))) {
        raced = true;
        await doc().send(new PutCommand({ TableName: t.table, Item: tagItem }));
      }
      return out;
    }, { step: 'finalizeRequest', name: 'raceAFill' });
    try {
      const index = createDynamoDbIndex({ client: racing, table: t.table });
      // Its second look finds the tag: the marker goes back, and the repository counts as not dropped.
      expect(await index.dropRepositoryIfEmpty(name)).toBe(false);
      expect(raced).toBe(true);
      expect(await item('repos', name)).toBeDefined();
      expect(await t.index.listRepositories()).toEqual([name]);
      // Without the race the marker goes.
      await t.index.deleteTag(name, 'v1');
      expect(await t.index.dropRepositoryIfEmpty(name)).toBe(true);
      expect(await item('repos', name)).toBeUndefined();
      expect(await t.index.listRepositories()).toEqual([]);
    } finally {
      racing.destroy();
    }
  });

  describe('large manifest bodies (manifests/<alg>/<hex>, shared by digest) and their collection', () => {
    const body = new Uint8Array(1500).fill(9);
    const digest = sha256Digest(body);
    const key = `manifests/sha256/${digest.slice('sha256:'.length)}`;
    const record = (name: string) => ({ name, digest, mediaType: 'm', size: body.length, body });
    const T = 1_000_000;
    const sweep = async (graceFrom: number, dryRun = false) => {
      const out = [];
      for await (const b of t.index.sweepManifestBodies!(undefined, { graceFrom, dryRun })) out.push(b);
      return out;
    };
    let clock: { now: number };
    beforeEach(async () => {
      await t.close();
      clock = { now: T };
      large = mapLargeObjects(clock);
      t = await openTable({ largeObjects: large, inlineLimitBytes: 1000 });
    });

    it('one object for two repositories; it goes only once neither points to it and it is older than the grace period', async () => {
      await t.index.putManifest(record('r/a'), [sha256Digest('l')], 'r');
      await t.index.putManifest(record('r/b'), [sha256Digest('l')], 'r');
      expect([...large.objects.keys()]).toEqual([key]);
      expect(await item(`body#${digest}`, 'ref#r/a')).toMatchObject({ gen: expect.any(String) });
      expect(await t.index.deleteManifest('r/a', digest, { referencedBlobs: [sha256Digest('l')] })).toBe(true);
      expect(await item(`body#${digest}`, 'ref#r/a')).toBeUndefined();
      expect(await sweep(T + 1)).toEqual([{ key, size: 1500, removed: false }]); // r/b still points to it
      expect(Buffer.from((await t.index.getManifest('r/b', digest))!.body).equals(Buffer.from(body))).toBe(true);
      expect(await t.index.deleteManifest('r/b', digest, { referencedBlobs: [sha256Digest('l')] })).toBe(true);
      expect(await sweep(T)).toEqual([{ key, size: 1500, removed: false }]); // written within the grace period
      expect(await sweep(T + 1, true)).toEqual([{ key, size: 1500, removed: true }]);
      expect(large.objects.has(key)).toBe(true); // a dry run removes nothing
      expect(await sweep(T + 1)).toEqual([{ key, size: 1500, removed: true }]);
      expect(large.objects.size).toBe(0);
    });

    it('a manifest stored before body references existed gets one from addBlobReferences (the GC backfill), so it is kept', async () => {
      await t.index.putManifest(record('r/old'), [], 'r');
      await doc().send(new DeleteCommand({ TableName: t.table, Key: { pk: `body#${digest}`, sk: 'ref#r/old' } }));
      await t.index.addBlobReferences('r/old', digest, 'r', []);
      expect(await sweep(T + 1)).toEqual([{ key, size: 1500, removed: false }]);
    });

    it('a delete interrupted after the item leaves a journal entry that removes the body reference too', async () => {
      await t.index.putManifest(record('r/j'), [], 'r');
      const gen = (await item('repo#r/j', `manifest#${digest}`))!.gen as string;
      // What deleteManifest writes before it deletes the item (the process died right after the item's delete).
      await doc().send(new PutCommand({ TableName: t.table, Item: { pk: 'lifecycle', sk: `pending#r/j@${digest}`, rule: 'r', gen, blobs: [], body: true } }));
      await doc().send(new DeleteCommand({ TableName: t.table, Key: { pk: 'repo#r/j', sk: `manifest#${digest}` } }));
      expect(await t.index.finishInterruptedDeletes()).toBe(1);
      expect(await item(`body#${digest}`, 'ref#r/j')).toBeUndefined();
      expect(await sweep(T + 1)).toEqual([{ key, size: 1500, removed: true }]);
    });

    it('the GC puts a body back when a writer stored that manifest between its look and its delete', async () => {
      await t.index.putManifest(record('r/a'), [], 'r');
      await t.index.deleteManifest('r/a', digest, { referencedBlobs: [] });
      const getObject = large.getObject.bind(large);
      large.getObject = async (k) => {
        const bytes = await getObject(k);
        // The GC found no reference and read the body; now a writer stores the manifest, whole (object, reference,
        // item, and its HEAD, which still finds the object), before the GC's delete.
        large.getObject = getObject;
        await t.index.putManifest(record('r/b'), [], 'r');
        return bytes;
      };
      expect(await sweep(T + 1)).toEqual([{ key, size: 1500, removed: false }]);
      expect(Buffer.from((await t.index.getManifest('r/b', digest))!.body).equals(Buffer.from(body))).toBe(true);
    });

    it('a writer puts its body back when a GC removed it between the object write and the item', async () => {
      const putObject = large.putObject.bind(large);
      let puts = 0;
      large.putObject = async (k, bytes) => {
        puts++;
        if (puts > 1) await putObject(k, bytes); // the first write is removed by a GC right after it (not kept)
      };
      await t.index.putManifest(record('r/w'), [], 'r');
      expect(puts).toBe(2);
      expect(Buffer.from((await t.index.getManifest('r/w', digest))!.body).equals(Buffer.from(body))).toBe(true);
    });
  });

  it('a writer that marked the repository before keeps it listed when a GC dropped the marker in between (it reads the marker after its write)', async () => {
    const name = 'r/rewritten';
    const m = { name, digest: sha256Digest('m2'), mediaType: 'm', size: 2, body: new Uint8Array([1, 2]) };
    // The writer (a registry process) marked the repository with its first tag and remembers having done so.
    const writer = createDynamoDbIndex({ client, table: t.table });
    await writer.putTag({ name, tag: 'v0', digest: m.digest, mediaType: 'm', size: 2, fetchedAt: 1, checkedAt: 1 });
    // Another process (the GC) empties the repository and drops its marker.
    await t.index.deleteTag(name, 'v0');
    expect(await t.index.dropRepositoryIfEmpty(name)).toBe(true);
    expect(await item('repos', name)).toBeUndefined();
    // The writer's next tag and manifest: its own memory says "marked", the read after the write says otherwise.
    await writer.putTag({ name, tag: 'v1', digest: m.digest, mediaType: 'm', size: 2, fetchedAt: 2, checkedAt: 2 });
    expect(await t.index.listRepositories()).toEqual([name]);
    await t.index.deleteTag(name, 'v1');
    expect(await t.index.dropRepositoryIfEmpty(name)).toBe(true);
    await writer.putManifest(m, [], 'r');
    expect(await t.index.listRepositories()).toEqual([name]);
  });

  it('rejects an inline limit that cannot fit a 400 KB item', () => {
    expect(() => createDynamoDbIndex({ client, table: 'x', inlineLimitBytes: 400_000 })).toThrow(RangeError);
  });
});
