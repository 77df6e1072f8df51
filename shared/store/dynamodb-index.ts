/**
 * AWS index adapter: tag index, manifest store, blob links, blob records and fill leases in one DynamoDB table
 * (single-table design, string keys `pk`/`sk`, on-demand billing). Item layout:
 *
 * | item            | pk               | sk                  | attributes                                           |
 * |-----------------|------------------|---------------------|------------------------------------------------------|
 * | tag             | `repo#<name>`    | `tag#<tag>`         | digest, mediaType, size (bytes), fetchedAt, checkedAt, pulledAt (ms); dueAt (ms) + dueShard and lastCheck (map) when set |
 * | manifest        | `repo#<name>`    | `manifest#<digest>` | mediaType, size (bytes), storedAt, pulledAt (ms), rule, gen, `body` (Binary) or `bodyKey` |
 * | link            | `repo#<name>`    | `blob#<digest>`     | — (the name's upstream confirmed the blob: its fill, or a HEAD; never a manifest reference) |
 * | repository mark | `repos`          | `<name>`            | — (written with a repository's first tag or manifest; removed when the lifecycle empties it) |
 * | blob record     | `blob#<digest>`  | `blob`              | size (bytes), committedAt (ms); unpublishedAt (ms) on a tombstone (dynamodb-blob-records.ts) |
 * | fill lease      | `fill#<key>`     | `lease`             | owner, expiresAt, heartbeatAt (ms), `ttl` (epoch s, DynamoDB TTL) |
 * | listing         | `repo#<name>`    | `listing#<key>`     | body (JSON text ≤ `inlineLimitBytes`), fetchedAt (ms) |
 *
 * Due tags (the scheduled refresh): the sparse GSI {@link DUE_INDEX} (`due`; partition `dueShard` S, sort `dueAt` N,
 * projection ALL; see `dynamodb-table.ts`). A tag with a `dueAt` also carries `dueShard = 'due#<k>'`,
 * k = hash(`<name>\n<tag>`) mod {@link DUE_SHARDS}, so due tags spread over 8 GSI partitions instead of one hot
 * one; a tag without `dueAt` has neither attribute and is not in the index. `listDueTags` queries each shard
 * (`dueAt <= now`, ascending) and merges: never a Scan. GSI reads are eventually consistent (DynamoDB offers
 * no other kind), so a tag written a moment ago may be listed a moment late; the refresh tolerates that.
 *
 * The lifecycle's items (blob reference items, state, delete journal): see dynamodb-lifecycle.ts.
 *
 * DynamoDB limits respected: an item is ≤ 400 KB (manifest bodies above `inlineLimitBytes` go to the
 * {@link LargeObjectStore} under `manifests/<algorithm>/<hex>` and the item keeps `bodyKey`); BatchWriteItem
 * takes ≤ 25 items (100 per transaction, which we do not use: see `putManifest`); a Query page is ≤ 1 MB, so
 * listings follow `LastEvaluatedKey`.
 *
 * Listing repositories: every repository gets a marker item in the `repos` partition when its first tag or
 * manifest is stored, so the catalog is one Query instead of a table Scan. Markers are idempotent puts; an
 * in-process set skips re-writing the ones this process already wrote, and every tag or manifest write is followed
 * by one read of its marker, so one the lifecycle removed meanwhile is put back (dynamodb-context.ts). One
 * partition holds all markers: writes are about once per repository per process, reads are catalog calls and
 * those checks.
 *
 * Reads are strongly consistent by default: a cache that just wrote an item must see it, since a miss costs an
 * upstream request (Docker Hub counts manifest GETs against its pull limit). Lease expiry compares the clocks
 * of the writers (Lambda clocks are NTP-synced; keep lease TTLs well above any skew).
 */
import { createDynamoDbContext, type DynamoDbIndexOptions } from './dynamodb-context.js';
import { createDynamoDbBlobRecords } from './dynamodb-blob-records.js';
import { createDynamoDbLifecycle } from './dynamodb-lifecycle.js';
import { createDynamoDbContentIndex } from './dynamodb-records.js';
import { createDynamoDbTagIndex } from './dynamodb-tags.js';
import type { BlobLinks, BlobRecords, FillLeases, LifecycleIndex, ListingCache, ManifestStore, TagIndex } from './ports.js';

export { DUE_INDEX, DUE_SHARDS, TABLE_KEY_SCHEMA, TTL_ATTRIBUTE, createTable, deleteTable, dueShardOf } from './dynamodb-table.js';
export { DEFAULT_INLINE_LIMIT_BYTES, DEFAULT_PAGE, type DynamoDbIndexOptions } from './dynamodb-context.js';

/** The DynamoDB index: every index port over one table. */
export type DynamoDbIndex = TagIndex & ManifestStore & BlobLinks & BlobRecords & FillLeases & ListingCache & LifecycleIndex;

/** Opens the index over an existing table (see {@link createTable}). No request is made until a port is used. */
export function createDynamoDbIndex(opts: DynamoDbIndexOptions): DynamoDbIndex {
  const ctx = createDynamoDbContext(opts);
  return {
    ...createDynamoDbTagIndex(ctx), ...createDynamoDbContentIndex(ctx), ...createDynamoDbBlobRecords(ctx), ...createDynamoDbLifecycle(ctx),
  };
}
