/**
 * The content part of the DynamoDB index: manifest items (bodies inline up to `inlineLimitBytes`, larger ones in
 * the {@link LargeObjectStore} under `manifests/<algorithm>/<hex>`), blob links and the lifecycle's blob
 * reference items, cached listings and fill leases (conditional puts, expiry by the writers' clocks, DynamoDB TTL
 * to clean up). Blob records: dynamodb-blob-records.ts.
 * See `dynamodb-index.ts` for the item layout.
 */
import { randomBytes } from 'node:crypto';
import { DeleteCommand, PutCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { blobRefItem, conditionalWrite, isConditionFailure, manifestOfItem, repoPk, type DynamoDbContext, type Item } from './dynamodb-context.js';
import { bodyRefItem, confirmBody, largeObjectKey } from './dynamodb-manifest-bodies.js';
import { TTL_ATTRIBUTE } from './dynamodb-table.js';
import type { BlobLinks, FillLeases, LargeObjectStore, ListingCache, ManifestRecord, ManifestStore } from './ports.js';

/** The lease item of `key` held by `owner`, alive at `t` (ms) and expiring `ttlSeconds` later. */
function leaseItem(key: string, owner: string, t: number, ttlSeconds: number): Item {
  const expiresAt = t + ttlSeconds * 1000;
  return { pk: `fill#${key}`, sk: 'lease', owner, expiresAt, heartbeatAt: t, [TTL_ATTRIBUTE]: Math.ceil(expiresAt / 1000) };
}

/** The manifest, link, listing, blob-record and lease ports over the index's table. */
export function createDynamoDbContentIndex(ctx: DynamoDbContext): ManifestStore & BlobLinks & FillLeases & ListingCache {
  const { doc, TableName, inlineLimit, now, opts, get, markRepository, confirmRepositoryMark, batchPut } = ctx;

  return {
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
      return manifestOfItem(name, digest, item, body);
    },

    async putManifest(r: ManifestRecord, referencedBlobs, rule = '') {
      const t = now();
      // `gen` names this store of the manifest: its reference items carry it, so a garbage collection deleting an
      // earlier store's references (conditionally on its gen) can never delete the references of a refill.
      const gen = randomBytes(9).toString('base64url');
      const item: Item = {
        pk: repoPk(r.name), sk: `manifest#${r.digest}`, mediaType: r.mediaType, size: r.size, storedAt: t, pulledAt: r.pulledAt ?? t, rule, gen,
      };
      if (r.verification) item.verification = JSON.stringify(r.verification);
      if (r.body.byteLength <= inlineLimit) {
        item.body = r.body;
      } else {
        if (!opts.largeObjects) {
          throw new Error(`manifest ${r.digest} is ${r.body.byteLength} bytes, over the ${inlineLimit}-byte inline limit, and no large-object store is configured`);
        }
        item.bodyKey = largeObjectKey(r.digest);
        await opts.largeObjects.putObject(item.bodyKey as string, r.body);
      }
      // Commit-ordered rather than transactional: the lifecycle's reference items (one per blob, in the blob's
      // partition; deduplicated: a batch refuses duplicate keys), then the repository marker, then the manifest
      // item, which is the commit point. A failure part-way leaves reference items only, which keep a blob from
      // being collected a little longer and grant nothing. No TransactWriteItems: it costs twice the write units
      // (a 350 KB manifest item is 350 units already) and concurrent fills of one manifest would cancel each other
      // with TransactionConflict. No blob links: a reference is no confirmation by the name's upstream (ports.ts).
      // A body in the large-object store gets its own reference item, and one look after the commit point puts
      // the body back if a GC removed it meanwhile (dynamodb-manifest-bodies.ts).
      const refs = [...new Set(referencedBlobs)].map((d) => blobRefItem(d, rule, r.name, r.digest, gen));
      if (item.bodyKey) refs.push(bodyRefItem(r.digest, r.name, gen));
      await batchPut(refs);
      await markRepository(r.name);
      await doc.send(new PutCommand({ TableName, Item: item }));
      await confirmRepositoryMark(r.name);
      if (item.bodyKey) await confirmBody(opts.largeObjects!, item.bodyKey as string, r.body);
    },

    async recordManifestPull(name, digest, pulledAt) {
      return conditionalWrite(() => doc.send(new UpdateCommand({
        TableName, Key: { pk: repoPk(name), sk: `manifest#${digest}` }, UpdateExpression: 'SET #p = :p',
        ConditionExpression: 'attribute_exists(#pk)', ExpressionAttributeNames: { '#p': 'pulledAt', '#pk': 'pk' }, ExpressionAttributeValues: { ':p': pulledAt },
      })));
    },

    async recordVerification(name, digest, verification) {
      // Conditional: recording a verdict for a manifest that is not stored creates nothing.
      await conditionalWrite(() => doc.send(new UpdateCommand({
        TableName, Key: { pk: repoPk(name), sk: `manifest#${digest}` }, UpdateExpression: 'SET #v = :v',
        ConditionExpression: 'attribute_exists(#pk)', ExpressionAttributeNames: { '#v': 'verification', '#pk': 'pk' },
        ExpressionAttributeValues: { ':v': JSON.stringify(verification) },
      })));
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
      if (Buffer.byteLength(body) > inlineLimit) return false; // too large for an item: not kept (a cache, not a record)
      // Kept only for a repository holding content, i.e. with its catalog marker (ports.ts). The marker is read
      // before and after the put; the lifecycle drops the marker before the listings (dynamodb-lifecycle.ts). A
      // second read that finds the marker means the put came before the drop, so the lifecycle's listing delete
      // sees it; one that finds it gone takes the listing back itself. Either way no listing outlives the content.
      if (!(await ctx.isRepositoryMarked(name))) return false;
      const Key = { pk: repoPk(name), sk: `listing#${key}` };
      await doc.send(new PutCommand({ TableName, Item: { ...Key, body, fetchedAt: now() } }));
      if (await ctx.isRepositoryMarked(name)) return true;
      await doc.send(new DeleteCommand({ TableName, Key }));
      return false;
    },

    async acquireLease(key, owner, ttlSeconds, staleSeconds) {
      const t = now();
      const names: Record<string, string> = { '#pk': 'pk', '#expiresAt': 'expiresAt', '#owner': 'owner' };
      const values: Record<string, unknown> = { ':now': t, ':owner': owner };
      let condition = 'attribute_not_exists(#pk) OR #expiresAt <= :now OR #owner = :owner';
      if (staleSeconds !== undefined) {
        // A lease without a heartbeat (written by an older release) counts as stale.
        condition += ' OR attribute_not_exists(#heartbeatAt) OR #heartbeatAt <= :staleBefore';
        names['#heartbeatAt'] = 'heartbeatAt';
        values[':staleBefore'] = t - staleSeconds * 1000;
      }
      try {
        await doc.send(new PutCommand({
          TableName, Item: leaseItem(key, owner, t, ttlSeconds),
          ConditionExpression: condition, ExpressionAttributeNames: names, ExpressionAttributeValues: values,
        }));
        return true;
      } catch (e) {
        if (isConditionFailure(e)) return false;
        throw e;
      }
    },

    async heartbeatLease(key, owner, ttlSeconds) {
      // A conditional PutItem rather than UpdateItem: the fill function's role may put and delete, not update.
      try {
        await doc.send(new PutCommand({
          TableName, Item: leaseItem(key, owner, now(), ttlSeconds), ConditionExpression: '#owner = :owner',
          ExpressionAttributeNames: { '#owner': 'owner' }, ExpressionAttributeValues: { ':owner': owner },
        }));
        return true;
      } catch (e) {
        if (isConditionFailure(e)) return false;
        throw e;
      }
    },

    async getLease(key) {
      const item = await get(`fill#${key}`, 'lease');
      return item && { owner: item.owner as string, expiresAt: item.expiresAt as number, heartbeatAt: (item.heartbeatAt as number | undefined) ?? 0 };
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
