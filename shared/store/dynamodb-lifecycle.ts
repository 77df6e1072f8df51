/**
 * The DynamoDB index's {@link LifecycleIndex} (GC, purge, ls). Items it adds to the layout of dynamodb-index.ts:
 *
 * | item            | pk              | sk                                     | attributes                         |
 * |-----------------|-----------------|----------------------------------------|------------------------------------|
 * | blob reference  | `blob#<digest>` | `ref#<rule>#<name>@<manifest digest>`  | gen (the manifest store it belongs to) |
 * | lifecycle state | `lifecycle`     | `state#<key>`                          | value (JSON text)                  |
 * | delete journal  | `lifecycle`     | `pending#<name>@<manifest digest>`     | rule, gen, blobs (list), body      |
 * | body reference  | `body#<digest>` | `ref#<name>`                           | gen (dynamodb-manifest-bodies.ts)  |
 *
 * Manifest items carry `rule`, `gen` (random per store) and `pulledAt`. A manifest is deleted item first, then
 * its reference items, each conditionally on the deleted item's `gen`: a refill that stored the manifest again
 * (a new `gen`) keeps its own references, whatever the interleaving. A journal item written before and deleted
 * after makes the two steps finish even if the process dies between them ({@link finishInterruptedDeletes}).
 * "Which rules reference this blob" is one Query of the blob's partition (20 reference keys), skipping ahead past
 * each rule found when there are more.
 * Large manifest bodies (over the inline limit, S3 `manifests/<alg>/<hex>`) are keyed by digest and may be shared by
 * several repositories' items: deleting a manifest item deletes its body reference (`body#<digest>` / `ref#<name>`,
 * with the blob references, same gen rule, same journal), and a GC pass removes bodies no reference names any more
 * once past the grace period ({@link LifecycleIndex.sweepManifestBodies}; protocol in dynamodb-manifest-bodies.ts).
 * A repository left with no tag and no manifest loses its links, kept listings and catalog marker (`repos`), so
 * `_catalog` and `ls` stop listing it (listings are kept only for marked repositories: dynamodb-records.ts); a fill adding content back meanwhile keeps (or puts back) its marker (the
 * protocol: dynamodb-context.ts).
 */
import { BatchWriteCommand, DeleteCommand, PutCommand, QueryCommand, ScanCommand, UpdateCommand, type QueryCommandInput } from '@aws-sdk/lib-dynamodb';
import type { Digest } from '../oci/digest.js';
import { blobRefItem, conditionalWrite, manifestOfItem, repoPk, type DynamoDbContext, type Item } from './dynamodb-context.js';
import { bodyRefItem, createManifestBodySweep } from './dynamodb-manifest-bodies.js';
import { tagOf } from './dynamodb-tags.js';
import type { LifecycleIndex } from './ports.js';

/** Rules looked for per blob before the skip-scan gives up (a guard; configs have a handful). */
const MAX_RULES = 1000;
/** Reference keys read per Query of {@link LifecycleIndex.blobReferrers}. */
const REFS_PER_QUERY = 20;

/** The {@link LifecycleIndex} port over the index's table. */
export function createDynamoDbLifecycle(ctx: DynamoDbContext): LifecycleIndex {
  const { doc, TableName, ConsistentRead, opts, get } = ctx;

  /** Items of `pk` whose sort key starts with `prefix`, after `prefix + after`, in key order, at most `limit`. */
  async function queryItems(pk: string, prefix: string, after: string, limit: number): Promise<Item[]> {
    const from = `${prefix}${after}`;
    const to = `${prefix.slice(0, -1)}${String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)}`;
    const out: Item[] = [];
    let startKey: QueryCommandInput['ExclusiveStartKey'];
    for (let page = 0; page < limit + 2 && out.length < limit; page++) {
      const res = await doc.send(new QueryCommand({
        TableName, KeyConditionExpression: '#pk = :pk AND #sk BETWEEN :from AND :to',
        ExpressionAttributeNames: { '#pk': 'pk', '#sk': 'sk' }, ExpressionAttributeValues: { ':pk': pk, ':from': from, ':to': to },
        ConsistentRead, ExclusiveStartKey: startKey, Limit: Math.min(limit - out.length + 1, opts.queryLimit ?? Infinity),
      }));
      for (const item of res.Items ?? []) if (item.sk !== from && out.length < limit) out.push(item);
      startKey = res.LastEvaluatedKey;
      if (!startKey) break;
    }
    return out;
  }

  /** Deletes items by key, 25 per BatchWriteItem, retrying what DynamoDB leaves unprocessed (bounded). */
  async function batchDelete(keys: Array<{ pk: string; sk: string }>): Promise<void> {
    for (let i = 0; i < keys.length; i += 25) {
      let requests = keys.slice(i, i + 25).map((Key) => ({ DeleteRequest: { Key } }));
      for (let attempt = 1; requests.length > 0; attempt++) {
        if (attempt > 8) throw new Error(`DynamoDB left ${requests.length} deletes unprocessed`);
        if (attempt > 1) await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** attempt, 2000)));
        const res = await doc.send(new BatchWriteCommand({ RequestItems: { [TableName]: requests } }));
        requests = (res.UnprocessedItems?.[TableName] ?? []) as typeof requests;
      }
    }
  }

  const conditional = conditionalWrite;

  /** True when repository `name` has a tag or a manifest: one strongly consistent Query of at most one item. */
  async function hasContent(name: string): Promise<boolean> {
    // Sort keys `manifest#…` and `tag#…` are the repository's content; nothing else of the partition sorts between
    // them (links are `blob#…`, listings `listing#…`).
    const res = await doc.send(new QueryCommand({
      TableName, KeyConditionExpression: '#pk = :pk AND #sk BETWEEN :from AND :to', ExpressionAttributeNames: { '#pk': 'pk', '#sk': 'sk' },
      ExpressionAttributeValues: { ':pk': repoPk(name), ':from': 'manifest#', ':to': 'tag$' }, ProjectionExpression: '#sk', ConsistentRead: true, Limit: 1,
    }));
    return (res.Items?.length ?? 0) > 0;
  }

  /**
   * Deletes a manifest's reference items that belong to store `gen` (undefined: written before gens): one per blob,
   * and its body reference when `body` (its body is in the large-object store).
   */
  async function deleteRefs(name: string, digest: string, rule: string, gen: string | undefined, blobs: string[], body: boolean): Promise<void> {
    const keys = [...new Set(blobs)].map((b) => blobRefItem(b, rule, name, digest));
    if (body) keys.push(bodyRefItem(digest, name));
    for (const { pk, sk } of keys) {
      await conditional(() => doc.send(new DeleteCommand({
        TableName, Key: { pk, sk },
        ConditionExpression: gen === undefined ? 'attribute_not_exists(#g)' : '#g = :g', ExpressionAttributeNames: { '#g': 'gen' },
        ...(gen === undefined ? {} : { ExpressionAttributeValues: { ':g': gen } }),
      })));
    }
  }

  const journalKey = (name: string, digest: string) => ({ pk: 'lifecycle', sk: `pending#${name}@${digest}` });

  return {
    async listTagRecords(name, { after, limit }) {
      const items = await queryItems(repoPk(name), 'tag#', after ?? '', limit);
      return items.map((item) => tagOf(name, (item.sk as string).slice('tag#'.length), item));
    },

    async listManifestRecords(name, { after, limit }) {
      const items = await queryItems(repoPk(name), 'manifest#', after ?? '', limit);
      const out = [];
      for (const item of items) {
        const digest = (item.sk as string).slice('manifest#'.length) as Digest;
        const body = typeof item.bodyKey === 'string' ? await opts.largeObjects?.getObject(item.bodyKey) : (item.body as Uint8Array);
        if (body) out.push(manifestOfItem(name, digest, item, body));
      }
      return out;
    },

    async deleteTagIf(name, tag, expect) {
      const names: Record<string, string> = { '#d': 'digest' };
      const values: Record<string, unknown> = { ':d': expect.digest };
      let condition = '#d = :d';
      if (expect.pulledAt !== undefined) {
        // Tags written before the lifecycle have no pulledAt: their fetch time stands for it (as tagOf reports).
        condition += ' AND (#p = :p OR (attribute_not_exists(#p) AND #f = :p))';
        Object.assign(names, { '#p': 'pulledAt', '#f': 'fetchedAt' });
        values[':p'] = expect.pulledAt;
      }
      return conditional(() => doc.send(new DeleteCommand({
        TableName, Key: { pk: repoPk(name), sk: `tag#${tag}` }, ConditionExpression: condition,
        ExpressionAttributeNames: names, ExpressionAttributeValues: values,
      })));
    },

    async deleteManifest(name, digest, { referencedBlobs, ifPulledAt }) {
      const item = await get(repoPk(name), `manifest#${digest}`);
      if (!item) return false;
      if (ifPulledAt !== undefined && (item.pulledAt ?? item.storedAt) !== ifPulledAt) return false;
      const rule = (item.rule as string | undefined) ?? '';
      const gen = item.gen as string | undefined;
      const blobs = [...new Set(referencedBlobs)];
      const body = typeof item.bodyKey === 'string';
      await doc.send(new PutCommand({ TableName, Item: { ...journalKey(name, digest), rule, ...(gen ? { gen } : {}), blobs, ...(body ? { body } : {}) } }));
      // Deleted only if it is still the store we read (same gen, not pulled since).
      const deleted = await conditional(() => doc.send(new DeleteCommand({
        TableName, Key: { pk: repoPk(name), sk: `manifest#${digest}` },
        ConditionExpression: gen === undefined ? 'attribute_exists(#pk) AND attribute_not_exists(#g)' : '#g = :g',
        ExpressionAttributeNames: gen === undefined ? { '#pk': 'pk', '#g': 'gen' } : { '#g': 'gen' },
        ...(gen === undefined ? {} : { ExpressionAttributeValues: { ':g': gen } }),
      })));
      if (deleted) await deleteRefs(name, digest, rule, gen, blobs, body);
      await doc.send(new DeleteCommand({ TableName, Key: journalKey(name, digest) }));
      return deleted;
    },

    async finishInterruptedDeletes() {
      let finished = 0;
      for (let page = 0; page < 10_000; page++) {
        const entries = await queryItems('lifecycle', 'pending#', '', 100);
        for (const e of entries) {
          const key = (e.sk as string).slice('pending#'.length);
          const at = key.lastIndexOf('@');
          const name = key.slice(0, at);
          const digest = key.slice(at + 1);
          const item = await get(repoPk(name), `manifest#${digest}`);
          // Still the same store: its delete never happened, so its references stay. Otherwise (gone, or a refill
          // with a new gen) the references of the deleted store go; a refill's own ones do not match its gen.
          if (!item || item.gen !== e.gen) await deleteRefs(name, digest, e.rule as string, e.gen as string | undefined, e.blobs as string[], e.body === true);
          await doc.send(new DeleteCommand({ TableName, Key: { pk: 'lifecycle', sk: e.sk as string } }));
          finished++;
        }
        if (entries.length < 100) break;
      }
      return finished;
    },

    async dropRepositoryIfEmpty(name) {
      if (await hasContent(name)) return false;
      const deleteAll = async (prefix: string) => {
        for (let page = 0; page < 100_000; page++) {
          const items = await queryItems(repoPk(name), prefix, '', 500);
          await batchDelete(items.map((i) => ({ pk: i.pk as string, sk: i.sk as string })));
          if (items.length < 500) break;
        }
      };
      await deleteAll('blob#');
      // Then the catalog marker, then the listings (a listing writer reads the marker after its put, so a listing put
      // before the marker went is found by this delete, and one put after takes itself back: dynamodb-records.ts),
      // then a second look: content a writer stored meanwhile gets its marker back (dynamodb-context.ts).
      await ctx.dropRepositoryMark(name);
      await deleteAll('listing#');
      if (await hasContent(name)) {
        await ctx.putRepositoryMark(name);
        return false;
      }
      return true;
    },

    async sweepListings({ after, dryRun, stopped }) {
      // A Scan (the only way to find listing items of repositories the catalog does not know), a page at a time,
      // resumable from the last key. Run once per table (gc.ts): listings written since need a marked repository.
      let removed = 0;
      let startKey = after === undefined ? undefined : (JSON.parse(after) as Record<string, string>);
      for (let page = 0; page < 1_000_000; page++) {
        if (stopped()) return { removed, next: JSON.stringify(startKey) };
        const res = await doc.send(new ScanCommand({
          TableName, FilterExpression: 'begins_with(#sk, :listing)', ProjectionExpression: '#pk, #sk',
          ExpressionAttributeNames: { '#pk': 'pk', '#sk': 'sk' }, ExpressionAttributeValues: { ':listing': 'listing#' },
          ExclusiveStartKey: startKey, Limit: 1000,
        }));
        const byName = new Map<string, Array<{ pk: string; sk: string }>>();
        for (const i of res.Items ?? []) {
          const pk = i.pk as string;
          if (pk.startsWith('repo#')) byName.set(pk, [...(byName.get(pk) ?? []), { pk, sk: i.sk as string }]);
        }
        for (const [pk, keys] of byName) {
          if (await hasContent(pk.slice('repo#'.length))) continue;
          removed += keys.length;
          if (!dryRun) await batchDelete(keys);
        }
        startKey = res.LastEvaluatedKey as Record<string, string> | undefined;
        if (!startKey) return { removed };
      }
      return { removed, next: JSON.stringify(startKey) };
    },

    async addBlobReferences(name, digest, rule, blobs) {
      const item = await get(repoPk(name), `manifest#${digest}`);
      if (!item) return;
      const gen = item.gen as string | undefined;
      const refs = [...new Set(blobs)].map((b) => blobRefItem(b, rule, name, digest, gen));
      if (typeof item.bodyKey === 'string') refs.push(bodyRefItem(digest, name, gen));
      await ctx.batchPut(refs);
      // The item names the rule its references are keyed by (deleteManifest reads it): set it when it has none.
      if (!item.rule) {
        await conditional(() => doc.send(new UpdateCommand({
          TableName, Key: { pk: repoPk(name), sk: `manifest#${digest}` }, UpdateExpression: 'SET #r = :r',
          ConditionExpression: 'attribute_exists(#pk) AND (attribute_not_exists(#r) OR #r = :none)', ExpressionAttributeNames: { '#r': 'rule', '#pk': 'pk' },
          ExpressionAttributeValues: { ':r': rule, ':none': '' },
        })));
      }
    },

    async blobReferrers(digest) {
      // One Query of up to REFS_PER_QUERY reference keys usually answers (a blob has a few references); a blob with
      // more skips ahead past each rule found ('~' sorts after every character of names and digests).
      const rules: string[] = [];
      let from = 'ref#';
      for (let i = 0; i < MAX_RULES; i++) {
        const res = await doc.send(new QueryCommand({
          TableName, KeyConditionExpression: '#pk = :pk AND #sk BETWEEN :from AND :to',
          ExpressionAttributeNames: { '#pk': 'pk', '#sk': 'sk' }, ExpressionAttributeValues: { ':pk': `blob#${digest}`, ':from': from, ':to': 'ref$' },
          ProjectionExpression: '#sk', ConsistentRead, Limit: REFS_PER_QUERY,
        }));
        for (const item of res.Items ?? []) {
          const sk = item.sk as string;
          const rule = sk.slice('ref#'.length, sk.indexOf('#', 'ref#'.length));
          if (rules[rules.length - 1] !== rule) rules.push(rule);
        }
        if (!res.LastEvaluatedKey || rules.length === 0) break;
        from = `ref#${rules[rules.length - 1]}#~`;
      }
      return rules;
    },

    async referencedBy(digest, rule, name) {
      // Names and rule prefixes hold no '@' or '#' (the name grammar), so this prefix is this repository's alone.
      const res = await doc.send(new QueryCommand({
        TableName, KeyConditionExpression: '#pk = :pk AND begins_with(#sk, :prefix)',
        ExpressionAttributeNames: { '#pk': 'pk', '#sk': 'sk' }, ExpressionAttributeValues: { ':pk': `blob#${digest}`, ':prefix': `ref#${rule}#${name}@` },
        ProjectionExpression: '#sk', ConsistentRead, Limit: 1,
      }));
      return (res.Items?.length ?? 0) > 0;
    },

    sweepManifestBodies: createManifestBodySweep(ctx),

    async getLifecycleState(key) {
      return (await get('lifecycle', `state#${key}`))?.value as string | undefined;
    },

    async putLifecycleState(key, value) {
      if (value === undefined) await doc.send(new DeleteCommand({ TableName, Key: { pk: 'lifecycle', sk: `state#${key}` } }));
      else await doc.send(new PutCommand({ TableName, Item: { pk: 'lifecycle', sk: `state#${key}`, value } }));
    },
  };
}
