/**
 * AWS index adapter: tag index, manifest store, blob links, blob records and fill leases in one DynamoDB table
 * (single-table design, string keys `pk`/`sk`, on-demand billing). Item layout:
 *
 * | item            | pk               | sk                  | attributes                                           |
 * |-----------------|------------------|---------------------|------------------------------------------------------|
 * | tag             | `repo#<name>`    | `tag#<tag>`         | digest, mediaType, size (bytes), fetchedAt, checkedAt (ms); dueAt (ms) + dueShard and lastCheck (map) when set |
 * | manifest        | `repo#<name>`    | `manifest#<digest>` | mediaType, size (bytes), storedAt (ms), `body` (Binary) or `bodyKey` |
 * | link            | `repo#<name>`    | `blob#<digest>`     | —                                                    |
 * | repository mark | `repos`          | `<name>`            | — (written with a repository's first tag or manifest) |
 * | blob record     | `blob#<digest>`  | `blob`              | size (bytes), committedAt (ms)                       |
 * | fill lease      | `fill#<key>`     | `lease`             | owner, expiresAt (ms), `ttl` (epoch s, DynamoDB TTL) |
 * | listing         | `repo#<name>`    | `listing#<key>`     | body (JSON text ≤ `inlineLimitBytes`), fetchedAt (ms) |
 *
 * Due tags (the scheduled refresh): the sparse GSI {@link DUE_INDEX} (`due`; partition `dueShard` S, sort `dueAt` N,
 * projection ALL; see `dynamodb-table.ts`). A tag with a `dueAt` also carries `dueShard = 'due#<k>'`,
 * k = hash(`<name>\n<tag>`) mod {@link DUE_SHARDS}, so due tags spread over 8 GSI partitions instead of one hot
 * one; a tag without `dueAt` has neither attribute and is not in the index. `listDueTags` queries each shard
 * (`dueAt <= now`, ascending) and merges: never a Scan. GSI reads are eventually consistent (DynamoDB offers
 * no other kind), so a tag written a moment ago may be listed a moment late; the refresh tolerates that.
 *
 * DynamoDB limits respected: an item is ≤ 400 KB (manifest bodies above `inlineLimitBytes` go to the
 * {@link LargeObjectStore} under `manifests/<algorithm>/<hex>` and the item keeps `bodyKey`); BatchWriteItem
 * takes ≤ 25 items (100 per transaction, which we do not use: see `putManifest`); a Query page is ≤ 1 MB, so
 * listings follow `LastEvaluatedKey`.
 *
 * Listing repositories: every repository gets a marker item in the `repos` partition when its first tag or
 * manifest is stored, so the catalog is one Query instead of a table Scan. Markers are idempotent puts; an
 * in-process set skips re-writing the ones this process already wrote (the ports never delete a repository).
 * One partition holds all markers: writes are once per repository per process, reads are catalog calls.
 *
 * Reads are strongly consistent by default: a cache that just wrote an item must see it, since a miss costs an
 * upstream request (Docker Hub counts manifest GETs against its pull limit). Lease expiry compares the clocks
 * of the writers (Lambda clocks are NTP-synced; keep lease TTLs well above any skew).
 */
import { ConditionalCheckFailedException, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  BatchWriteCommand, DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand, UpdateCommand,
  type QueryCommandInput,
} from '@aws-sdk/lib-dynamodb';
import { parseDigest, type Digest } from '../oci/digest.js';
import { DUE_INDEX, DUE_SHARDS, TTL_ATTRIBUTE, dueShardOf } from './dynamodb-table.js';
import type {
  BlobLinks, BlobRecords, FillLeases, LargeObjectStore, LastCheck, ListingCache, ManifestRecord, ManifestStore, TagIndex,
  TagRecord,
} from './ports.js';

export { DUE_INDEX, DUE_SHARDS, TABLE_KEY_SCHEMA, TTL_ATTRIBUTE, createTable, deleteTable, dueShardOf } from './dynamodb-table.js';

/** Default page size for listings when the client gives no `n`. */
export const DEFAULT_PAGE = 1000;
/** Default largest manifest body (bytes) kept inside its item; the item limit is 400 KB including keys. */
export const DEFAULT_INLINE_LIMIT_BYTES = 350_000;
/** Highest accepted `inlineLimitBytes`: leaves room under the 400 KB item limit for keys and attributes. */
const MAX_INLINE_LIMIT_BYTES = 390_000;
/** BatchWriteItem's limit: at most 25 put/delete requests per call. */
const BATCH_WRITE_MAX = 25;
/** Attempts at a batch whose items DynamoDB left unprocessed (throttling) before giving up. */
const BATCH_WRITE_ATTEMPTS = 8;

/** Options of {@link createDynamoDbIndex}. */
export interface DynamoDbIndexOptions {
  /** A document client, or a plain client (wrapped with `removeUndefinedValues`). */
  client: DynamoDBDocumentClient | DynamoDBClient;
  /** Table name; keys as in {@link TABLE_KEY_SCHEMA}. */
  table: string;
  /** Where manifest bodies over `inlineLimitBytes` go (S3 `manifests/`); without it they are refused. */
  largeObjects?: LargeObjectStore;
  /** Largest body (bytes) stored inside the manifest item; default 350 000, at most 390 000. */
  inlineLimitBytes?: number;
  /** Strongly consistent reads (default true; eventually consistent reads cost half). */
  consistentRead?: boolean;
  /** Clock, ms since the epoch (default `Date.now`): lease expiry, `storedAt`, `committedAt`. */
  now?: () => number;
  /** Upper bound on items per Query request (default: none beyond `n`); lets tests exercise paging. */
  queryLimit?: number;
}

/** The DynamoDB index: every index port over one table. */
export type DynamoDbIndex = TagIndex & ManifestStore & BlobLinks & BlobRecords & FillLeases & ListingCache;

type Item = Record<string, unknown>;

const isConditionFailure = (e: unknown): boolean =>
  e instanceof ConditionalCheckFailedException || (e as { name?: string } | null)?.name === 'ConditionalCheckFailedException';

const repoPk = (name: string) => `repo#${name}`;

/** Byte order of UTF-8 strings (DynamoDB's order of string keys). */
const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** A LastCheck as a map attribute, without undefined members (a plain client's marshaller refuses them). */
const lastCheckItem = (c: LastCheck): Item => ({ at: c.at, result: c.result, ...(c.error === undefined ? {} : { error: c.error }) });

/** The TagRecord of a tag item (table or `due` GSI: the GSI projects ALL). */
function tagOf(name: string, tag: string, item: Item): TagRecord {
  const lc = item.lastCheck as Item | undefined;
  return {
    name, tag, digest: item.digest as Digest, mediaType: item.mediaType as string, size: item.size as number,
    fetchedAt: item.fetchedAt as number, checkedAt: item.checkedAt as number,
    ...(typeof item.dueAt === 'number' ? { dueAt: item.dueAt } : {}),
    ...(lc ? { lastCheck: { at: lc.at as number, result: lc.result as LastCheck['result'], ...(typeof lc.error === 'string' ? { error: lc.error } : {}) } } : {}),
  };
}

/** Opens the index over an existing table (see {@link createTable}). No request is made until a port is used. */
export function createDynamoDbIndex(opts: DynamoDbIndexOptions): DynamoDbIndex {
  const doc = opts.client instanceof DynamoDBDocumentClient
    ? opts.client
    : DynamoDBDocumentClient.from(opts.client, { marshallOptions: { removeUndefinedValues: true } });
  const TableName = opts.table;
  const inlineLimit = opts.inlineLimitBytes ?? DEFAULT_INLINE_LIMIT_BYTES;
  if (!(inlineLimit >= 0 && inlineLimit <= MAX_INLINE_LIMIT_BYTES)) {
    throw new RangeError(`inlineLimitBytes must be within 0..${MAX_INLINE_LIMIT_BYTES} (DynamoDB items are ≤ 400 KB)`);
  }
  const ConsistentRead = opts.consistentRead ?? true;
  const now = opts.now ?? Date.now;
  const markedRepos = new Set<string>();

  const get = async (pk: string, sk: string) =>
    (await doc.send(new GetCommand({ TableName, Key: { pk, sk }, ConsistentRead }))).Item;

  /**
   * Sort keys of one partition, lexically (DynamoDB orders by UTF-8 bytes), after `after` (exclusive, non-empty)
   * and up to `upTo` (inclusive; requires `after`), at most `n`.
   */
  async function querySortKeys(pk: string, after: string | undefined, upTo: string | undefined, n: number): Promise<string[]> {
    if (n <= 0) return [];
    if (upTo !== undefined && !after) throw new Error('querySortKeys: an upper bound needs a lower bound');
    const out: string[] = [];
    const names = { '#pk': 'pk', '#sk': 'sk' };
    let cond = '#pk = :pk';
    const values: Record<string, string> = { ':pk': pk };
    // Query allows one condition on the sort key: BETWEEN (inclusive) when bounded above, else `>`.
    // With BETWEEN, the item equal to `after` is skipped below.
    if (upTo !== undefined) {
      cond += ' AND #sk BETWEEN :from AND :to';
      Object.assign(values, { ':from': after, ':to': upTo });
    } else if (after) {
      cond += ' AND #sk > :from';
      values[':from'] = after;
    }
    let startKey: QueryCommandInput['ExclusiveStartKey'];
    // Every page but the last holds ≥ 1 item (no filter), so n + 2 pages always suffice.
    for (let page = 0; page < n + 2 && out.length < n; page++) {
      const res = await doc.send(new QueryCommand({
        TableName, KeyConditionExpression: cond, ExpressionAttributeNames: names, ExpressionAttributeValues: values,
        ProjectionExpression: '#sk', ConsistentRead, ExclusiveStartKey: startKey,
        Limit: Math.min(n - out.length + 1, opts.queryLimit ?? Infinity),
      }));
      for (const item of res.Items ?? []) {
        const sk = item.sk as string;
        if (sk !== after && out.length < n) out.push(sk);
      }
      startKey = res.LastEvaluatedKey;
      if (!startKey) break;
    }
    return out;
  }

  async function markRepository(name: string): Promise<void> {
    if (markedRepos.has(name)) return;
    await doc.send(new PutCommand({ TableName, Item: { pk: 'repos', sk: name } }));
    markedRepos.add(name);
  }

  /** BatchWriteItem puts in chunks of 25, retrying unprocessed items with backoff (bounded). */
  async function batchPut(items: Item[]): Promise<void> {
    for (let i = 0; i < items.length; i += BATCH_WRITE_MAX) {
      let requests = items.slice(i, i + BATCH_WRITE_MAX).map((Item) => ({ PutRequest: { Item } }));
      for (let attempt = 1; requests.length > 0; attempt++) {
        if (attempt > BATCH_WRITE_ATTEMPTS) throw new Error(`DynamoDB left ${requests.length} link writes unprocessed`);
        if (attempt > 1) await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** attempt, 2000)));
        const res = await doc.send(new BatchWriteCommand({ RequestItems: { [TableName]: requests } }));
        requests = (res.UnprocessedItems?.[TableName] ?? []) as typeof requests;
      }
    }
  }

  /**
   * Tag items of one `due` GSI shard with dueAt ≤ `at`, earliest first, at most `n`, following LastEvaluatedKey.
   * No ConsistentRead: a GSI has only eventually consistent reads.
   */
  async function queryDueShard(shard: string, at: number, n: number): Promise<Item[]> {
    const out: Item[] = [];
    let startKey: QueryCommandInput['ExclusiveStartKey'];
    // No filter, so every page but the last holds ≥ 1 item: n + 1 pages always suffice.
    for (let page = 0; page <= n && out.length < n; page++) {
      const res = await doc.send(new QueryCommand({
        TableName, IndexName: DUE_INDEX, KeyConditionExpression: '#s = :s AND #d <= :now',
        ExpressionAttributeNames: { '#s': 'dueShard', '#d': 'dueAt' }, ExpressionAttributeValues: { ':s': shard, ':now': at },
        ScanIndexForward: true, ExclusiveStartKey: startKey, Limit: Math.min(n - out.length, opts.queryLimit ?? Infinity),
      }));
      for (const item of res.Items ?? []) if (out.length < n) out.push(item);
      startKey = res.LastEvaluatedKey;
      if (!startKey) break;
    }
    return out;
  }

  function largeObjectKey(digest: Digest): string {
    const parsed = parseDigest(digest);
    if (!parsed) throw new Error(`not a digest: ${digest.slice(0, 80)}`);
    return `manifests/${parsed.algorithm}/${parsed.encoded}`;
  }

  return {
    async getTag(name, tag) {
      const item = await get(repoPk(name), `tag#${tag}`);
      return item && tagOf(name, tag, item);
    },

    async putTag(r: TagRecord) {
      await markRepository(r.name);
      const item: Item = {
        pk: repoPk(r.name), sk: `tag#${r.tag}`, digest: r.digest, mediaType: r.mediaType, size: r.size,
        fetchedAt: r.fetchedAt, checkedAt: r.checkedAt,
      };
      if (r.dueAt !== undefined) Object.assign(item, { dueAt: r.dueAt, dueShard: dueShardOf(r.name, r.tag) });
      if (r.lastCheck) item.lastCheck = lastCheckItem(r.lastCheck);
      await doc.send(new PutCommand({ TableName, Item: item }));
    },

    async recordCheck(name, tag, check) {
      const names = { '#pk': 'pk', '#checkedAt': 'checkedAt', '#lastCheck': 'lastCheck', '#dueAt': 'dueAt', '#dueShard': 'dueShard' };
      const values: Record<string, unknown> = { ':c': check.checkedAt, ':l': lastCheckItem(check.lastCheck) };
      let update = 'SET #checkedAt = :c, #lastCheck = :l';
      if (check.dueAt !== undefined) {
        update += ', #dueAt = :d, #dueShard = :s';
        Object.assign(values, { ':d': check.dueAt, ':s': dueShardOf(name, tag) });
      } else {
        update += ' REMOVE #dueAt, #dueShard'; // never due again: out of the sparse GSI
      }
      try {
        await doc.send(new UpdateCommand({
          TableName, Key: { pk: repoPk(name), sk: `tag#${tag}` }, UpdateExpression: update,
          ConditionExpression: 'attribute_exists(#pk)', ExpressionAttributeNames: names, ExpressionAttributeValues: values,
        }));
      } catch (e) {
        if (!isConditionFailure(e)) throw e; // no tag (deleted meanwhile): a no-op, and nothing created
      }
    },

    async deleteTag(name, tag) {
      // The repository marker stays: its manifests stay pullable by digest (the ports never delete a repository).
      await doc.send(new DeleteCommand({ TableName, Key: { pk: repoPk(name), sk: `tag#${tag}` } }));
    },

    async listDueTags(at, limit) {
      if (!(limit > 0)) return [];
      // The earliest `limit` overall are among the earliest `limit` of each shard: query every shard (in
      // parallel), merge, sort, cut. Ties on dueAt are ordered by name, tag, so the result is deterministic.
      const shards = Array.from({ length: DUE_SHARDS }, (_, k) => queryDueShard(`due#${k}`, at, limit));
      const items = (await Promise.all(shards)).flat();
      const records = items.map((item) => tagOf((item.pk as string).slice('repo#'.length), (item.sk as string).slice('tag#'.length), item));
      records.sort((a, b) => a.dueAt! - b.dueAt! || byteOrder(a.name, b.name) || byteOrder(a.tag, b.tag));
      return records.slice(0, limit);
    },

    async touchTag(name, tag, checkedAt) {
      try {
        await doc.send(new UpdateCommand({
          TableName, Key: { pk: repoPk(name), sk: `tag#${tag}` },
          UpdateExpression: 'SET #checkedAt = :c', ConditionExpression: 'attribute_exists(#pk)',
          ExpressionAttributeNames: { '#checkedAt': 'checkedAt', '#pk': 'pk' }, ExpressionAttributeValues: { ':c': checkedAt },
        }));
      } catch (e) {
        if (!isConditionFailure(e)) throw e; // no tag: a no-op, as the port says
      }
    },

    async listTags(name, o = {}) {
      // Every sort key starting with `tag#` sorts before `tag$` ('$' follows '#'), whatever follows the prefix.
      const keys = await querySortKeys(repoPk(name), `tag#${o.last ?? ''}`, 'tag$', o.n ?? DEFAULT_PAGE);
      return keys.map((sk) => sk.slice('tag#'.length));
    },

    async listRepositories(o = {}) {
      return querySortKeys('repos', o.last || undefined, undefined, o.n ?? DEFAULT_PAGE);
    },

    async getManifest(name, digest) {
      const item = await get(repoPk(name), `manifest#${digest}`);
      if (!item) return undefined;
      let body: Uint8Array | undefined;
      if (typeof item.bodyKey === 'string') {
        if (!opts.largeObjects) throw new Error(`manifest ${digest} is stored in the large-object store, which is not configured`);
        body = await opts.largeObjects.getObject(item.bodyKey);
        if (!body) return undefined; // its object is gone: a miss, so the cache refetches and re-stores it
      } else {
        body = item.body as Uint8Array;
      }
      return { name, digest, mediaType: item.mediaType as string, size: item.size as number, body: new Uint8Array(body) };
    },

    async putManifest(r: ManifestRecord, referencedBlobs) {
      const item: Item = { pk: repoPk(r.name), sk: `manifest#${r.digest}`, mediaType: r.mediaType, size: r.size, storedAt: now() };
      if (r.body.byteLength <= inlineLimit) {
        item.body = r.body;
      } else {
        if (!opts.largeObjects) {
          throw new Error(`manifest ${r.digest} is ${r.body.byteLength} bytes, over the ${inlineLimit}-byte inline limit, and no large-object store is configured`);
        }
        item.bodyKey = largeObjectKey(r.digest);
        await opts.largeObjects.putObject(item.bodyKey as string, r.body);
      }
      // Commit-ordered rather than transactional: links (deduplicated: a batch refuses duplicate keys), then
      // the repository marker, then the manifest item, which is the commit point. A failure part-way leaves
      // links only, which grant nothing the manifest would not. No TransactWriteItems: it costs twice the
      // write units (a 350 KB manifest item is 350 units already) and concurrent fills of one manifest would
      // cancel each other with TransactionConflict.
      const links = [...new Set(referencedBlobs)].map((d) => ({ pk: repoPk(r.name), sk: `blob#${d}` }));
      await batchPut(links);
      await markRepository(r.name);
      await doc.send(new PutCommand({ TableName, Item: item }));
    },

    async isLinked(name, digest) {
      return (await get(repoPk(name), `blob#${digest}`)) !== undefined;
    },

    async link(name, digest) {
      await doc.send(new PutCommand({ TableName, Item: { pk: repoPk(name), sk: `blob#${digest}` } }));
    },

    async getListing(name, key) {
      const item = await get(repoPk(name), `listing#${key}`);
      return item && { body: item.body as string, fetchedAt: item.fetchedAt as number };
    },

    async putListing(name, key, body) {
      if (Buffer.byteLength(body) > inlineLimit) return; // too large for an item: not kept (a cache, not a record)
      await doc.send(new PutCommand({ TableName, Item: { pk: repoPk(name), sk: `listing#${key}`, body, fetchedAt: now() } }));
    },

    async getBlobRecord(digest) {
      const item = await get(`blob#${digest}`, 'blob');
      return item && { size: item.size as number, committedAt: item.committedAt as number };
    },

    async putBlobRecord(digest, size) {
      try {
        // The first commit wins, so committedAt keeps the time the bytes were first verified.
        await doc.send(new PutCommand({
          TableName, Item: { pk: `blob#${digest}`, sk: 'blob', size, committedAt: now() },
          ConditionExpression: 'attribute_not_exists(#pk)', ExpressionAttributeNames: { '#pk': 'pk' },
        }));
      } catch (e) {
        if (!isConditionFailure(e)) throw e;
      }
    },

    async acquireLease(key, owner, ttlSeconds) {
      const t = now();
      const expiresAt = t + ttlSeconds * 1000;
      try {
        await doc.send(new PutCommand({
          TableName,
          Item: { pk: `fill#${key}`, sk: 'lease', owner, expiresAt, [TTL_ATTRIBUTE]: Math.ceil(expiresAt / 1000) },
          ConditionExpression: 'attribute_not_exists(#pk) OR #expiresAt <= :now OR #owner = :owner',
          ExpressionAttributeNames: { '#pk': 'pk', '#expiresAt': 'expiresAt', '#owner': 'owner' },
          ExpressionAttributeValues: { ':now': t, ':owner': owner },
        }));
        return true;
      } catch (e) {
        if (isConditionFailure(e)) return false;
        throw e;
      }
    },

    async releaseLease(key, owner) {
      try {
        await doc.send(new DeleteCommand({
          TableName, Key: { pk: `fill#${key}`, sk: 'lease' }, ConditionExpression: '#owner = :owner',
          ExpressionAttributeNames: { '#owner': 'owner' }, ExpressionAttributeValues: { ':owner': owner },
        }));
      } catch (e) {
        if (!isConditionFailure(e)) throw e; // someone else's (or no) lease: a no-op
      }
    },
  };
}
