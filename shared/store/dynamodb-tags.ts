/**
 * The tag-index part of the DynamoDB index: tag items (`repo#<name>` / `tag#<tag>`), the repository listing over
 * the `repos` markers, and the due-time index — the sparse `due` GSI sharded over {@link DUE_SHARDS} partitions,
 * which `putTag`/`recordCheck` keep in step (`dueAt` + `dueShard`, removed when a tag is never due again) and
 * `listDueTags` queries shard by shard and merges (never a Scan). See `dynamodb-index.ts` for the item layout.
 */
import { DeleteCommand, PutCommand, QueryCommand, UpdateCommand, type QueryCommandInput } from '@aws-sdk/lib-dynamodb';
import type { Digest } from '../oci/digest.js';
import { DEFAULT_PAGE, isConditionFailure, repoPk, type DynamoDbContext, type Item } from './dynamodb-context.js';
import { DUE_INDEX, DUE_SHARDS, dueShardOf } from './dynamodb-table.js';
import type { LastCheck, TagIndex, TagRecord } from './ports.js';

/** Byte order of UTF-8 strings (DynamoDB's order of string keys). */
const byteOrder = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** A LastCheck as a map attribute, without undefined members (a plain client's marshaller refuses them). */
const lastCheckItem = (c: LastCheck): Item => ({ at: c.at, result: c.result, ...(c.error === undefined ? {} : { error: c.error }) });

/** The TagRecord of a tag item (table or `due` GSI: the GSI projects ALL). */
export function tagOf(name: string, tag: string, item: Item): TagRecord {
  const lc = item.lastCheck as Item | undefined;
  return {
    name, tag, digest: item.digest as Digest, mediaType: item.mediaType as string, size: item.size as number,
    fetchedAt: item.fetchedAt as number, checkedAt: item.checkedAt as number,
    ...(typeof item.dueAt === 'number' ? { dueAt: item.dueAt } : {}),
    ...(lc ? { lastCheck: { at: lc.at as number, result: lc.result as LastCheck['result'], ...(typeof lc.error === 'string' ? { error: lc.error } : {}) } } : {}),
    ...(typeof item.pulledAt === 'number' ? { pulledAt: item.pulledAt } : {}),
  };
}

/** The {@link TagIndex} port over the index's table. */
export function createDynamoDbTagIndex(ctx: DynamoDbContext): TagIndex {
  const { doc, TableName, opts, get, querySortKeys, markRepository, confirmRepositoryMark } = ctx;

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

  /** Sets one number attribute of an existing tag; a no-op (nothing created) when the tag is not there. */
  async function setIfExists(name: string, tag: string, attribute: string, value: number): Promise<void> {
    try {
      await doc.send(new UpdateCommand({
        TableName, Key: { pk: repoPk(name), sk: `tag#${tag}` },
        UpdateExpression: 'SET #a = :v', ConditionExpression: 'attribute_exists(#pk)',
        ExpressionAttributeNames: { '#a': attribute, '#pk': 'pk' }, ExpressionAttributeValues: { ':v': value },
      }));
    } catch (e) {
      if (!isConditionFailure(e)) throw e; // no tag: a no-op, as the port says
    }
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
      if (r.pulledAt !== undefined) item.pulledAt = r.pulledAt;
      await doc.send(new PutCommand({ TableName, Item: item }));
      await confirmRepositoryMark(r.name);
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
      // The repository marker stays: its manifests stay pullable by digest (a GC pass drops the marker of a
      // repository left with nothing).
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
      await setIfExists(name, tag, 'checkedAt', checkedAt);
    },

    async recordTagPull(name, tag, pulledAt) {
      await setIfExists(name, tag, 'pulledAt', pulledAt);
    },

    async listTags(name, o = {}) {
      // Every sort key starting with `tag#` sorts before `tag$` ('$' follows '#'), whatever follows the prefix.
      const keys = await querySortKeys(repoPk(name), `tag#${o.last ?? ''}`, 'tag$', o.n ?? DEFAULT_PAGE);
      return keys.map((sk) => sk.slice('tag#'.length));
    },

    async listRepositories(o = {}) {
      return querySortKeys('repos', o.last || undefined, undefined, o.n ?? DEFAULT_PAGE);
    },
  };
}
