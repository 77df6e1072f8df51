/**
 * What the DynamoDB index's per-concern parts share: the document client and table name, read consistency, the
 * clock and the large-object store, plus the helpers more than one part uses — a strongly consistent item read,
 * the paged sort-key listing behind `listTags` and `listRepositories`, the repository marker protocol and the
 * chunked, retried BatchWriteItem. {@link createDynamoDbContext} builds it from the index options once; the item
 * layout these keys follow is documented in `dynamodb-index.ts`.
 */
import { ConditionalCheckFailedException, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import {
  BatchWriteCommand, DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand, type QueryCommandInput,
} from '@aws-sdk/lib-dynamodb';
import type { Digest } from '../oci/digest.js';
import type { LargeObjectStore, ManifestRecord, ManifestVerification } from './ports.js';

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

/** An item as the document client returns it. */
export type Item = Record<string, unknown>;

export const isConditionFailure = (e: unknown): boolean =>
  e instanceof ConditionalCheckFailedException || (e as { name?: string } | null)?.name === 'ConditionalCheckFailedException';

export const repoPk = (name: string) => `repo#${name}`;

/** Runs a conditional write; resolves false when its condition failed (other errors are thrown). */
export async function conditionalWrite(send: () => Promise<unknown>): Promise<boolean> {
  try {
    await send();
    return true;
  } catch (e) {
    if (isConditionFailure(e)) return false;
    throw e;
  }
}

/**
 * The lifecycle's reference item: manifest `<name>@<manifest>` (rule `rule`, store `gen`) references blob `digest`.
 * In the blob's partition, so "is this blob referenced, and by which rules" is a Query of one partition.
 */
export const blobRefItem = (digest: string, rule: string, name: string, manifest: string, gen?: string): Item => ({
  pk: `blob#${digest}`, sk: `ref#${rule}#${name}@${manifest}`, ...(gen === undefined ? {} : { gen }),
});

/**
 * The ManifestRecord of a manifest item and its body. `pulledAt`: the item's, else its store time (items written
 * before the lifecycle).
 */
export function manifestOfItem(name: string, digest: Digest, item: Item, body: Uint8Array): ManifestRecord {
  return {
    name, digest, mediaType: item.mediaType as string, size: item.size as number, body: new Uint8Array(body),
    pulledAt: (item.pulledAt ?? item.storedAt) as number,
    ...(typeof item.verification === 'string' ? { verification: JSON.parse(item.verification) as ManifestVerification } : {}),
  };
}

/** The shared state and helpers of the index's parts (see the file header). */
export interface DynamoDbContext {
  readonly doc: DynamoDBDocumentClient;
  readonly TableName: string;
  readonly ConsistentRead: boolean;
  /** Largest body (bytes) stored inside an item. */
  readonly inlineLimit: number;
  readonly now: () => number;
  readonly opts: DynamoDbIndexOptions;
  get(pk: string, sk: string): Promise<Item | undefined>;
  querySortKeys(pk: string, after: string | undefined, upTo: string | undefined, n: number): Promise<string[]>;
  /** Before a repository's tag or manifest is written: its catalog marker (skipped when this process wrote it). */
  markRepository(name: string): Promise<void>;
  /**
   * After a repository's tag or manifest was written: one strongly consistent read of its marker, put back when a
   * garbage collection removed it meanwhile (see {@link createDynamoDbContext}).
   */
  confirmRepositoryMark(name: string): Promise<void>;
  /** The lifecycle's side: deletes `name`'s marker (and forgets that this process wrote it). */
  dropRepositoryMark(name: string): Promise<void>;
  /** The lifecycle's side: puts `name`'s marker back (content appeared while it was being dropped). */
  putRepositoryMark(name: string): Promise<void>;
  /** True when `name`'s catalog marker exists (one strongly consistent read): the listing writers' check. */
  isRepositoryMarked(name: string): Promise<boolean>;
  batchPut(items: Item[]): Promise<void>;
}

/** Builds the {@link DynamoDbContext} of one index; validates `inlineLimitBytes`. No request is made. */
export function createDynamoDbContext(opts: DynamoDbIndexOptions): DynamoDbContext {
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

  // Repository markers (`repos` / `<name>`, the catalog). A writer marks the repository before its content, so a
  // crash never leaves content the catalog and the lifecycle cannot see; it skips the write when this process made
  // it already. The lifecycle removes the marker of a repository it emptied (dynamodb-lifecycle.ts): it deletes
  // the marker, then looks for content, and puts the marker back if it finds some. A writer, after its content,
  // reads the marker and puts it back if it is gone. Whatever the interleaving, content ends up marked: if the
  // lifecycle's look missed the content, the content was written after that look, so after the delete, and the
  // writer's read after it finds the marker gone. No clock, no lease: one read per tag or manifest written.
  async function markRepository(name: string): Promise<void> {
    if (markedRepos.has(name)) return;
    await doc.send(new PutCommand({ TableName, Item: { pk: 'repos', sk: name } }));
    markedRepos.add(name);
  }

  async function confirmRepositoryMark(name: string): Promise<void> {
    // Strongly consistent whatever `consistentRead` says: the protocol's argument needs the latest state.
    if ((await doc.send(new GetCommand({ TableName, Key: { pk: 'repos', sk: name }, ConsistentRead: true }))).Item) return;
    await doc.send(new PutCommand({ TableName, Item: { pk: 'repos', sk: name } }));
    markedRepos.add(name);
  }

  async function isRepositoryMarked(name: string): Promise<boolean> {
    return (await doc.send(new GetCommand({ TableName, Key: { pk: 'repos', sk: name }, ConsistentRead: true }))).Item !== undefined;
  }

  async function putRepositoryMark(name: string): Promise<void> {
    await doc.send(new PutCommand({ TableName, Item: { pk: 'repos', sk: name } }));
  }

  async function dropRepositoryMark(name: string): Promise<void> {
    markedRepos.delete(name);
    await doc.send(new DeleteCommand({ TableName, Key: { pk: 'repos', sk: name } }));
  }

  /** BatchWriteItem puts in chunks of 25, retrying unprocessed items with backoff (bounded). */
  async function batchPut(items: Item[]): Promise<void> {
    for (let i = 0; i < items.length; i += BATCH_WRITE_MAX) {
      let requests = items.slice(i, i + BATCH_WRITE_MAX).map((Item) => ({ PutRequest: { Item } }));
      for (let attempt = 1; requests.length > 0; attempt++) {
        if (attempt > BATCH_WRITE_ATTEMPTS) throw new Error(`DynamoDB left ${requests.length} batched writes unprocessed`);
        if (attempt > 1) await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** attempt, 2000)));
        const res = await doc.send(new BatchWriteCommand({ RequestItems: { [TableName]: requests } }));
        requests = (res.UnprocessedItems?.[TableName] ?? []) as typeof requests;
      }
    }
  }

  return {
    doc, TableName, ConsistentRead, inlineLimit, now, opts, get, querySortKeys, markRepository, confirmRepositoryMark, dropRepositoryMark, putRepositoryMark,
    isRepositoryMarked, batchPut,
  };
}
