/**
 * The DynamoDB adapter of {@link RuleCounters} (counters.ts), in the index's table:
 *
 * | item        | pk              | sk                  | attributes |
 * |-------------|-----------------|---------------------|------------|
 * | hour bucket | `counts#<rule>` | `hour#<start, ms>`  | the counts (numbers), `ttl` (epoch s: two days after the hour; DynamoDB TTL deletes it) |
 * | total       | `counts#<rule>` | `total`             | the counts, `firstAt` (ms) |
 *
 * Adding is one UpdateItem with `ADD` per item (atomic, so writers add up) — two writes per rule per flush, about
 * once a minute per busy process, not per request. Reading is one Query (the day's buckets, ≤ 25 items) and one
 * GetItem per rule.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand, QueryCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { COUNT_FIELDS, KEEP_BUCKETS_MS, addCounts, noCounts, type RuleCounters, type RuleCounts } from './counters.js';
import { TTL_ATTRIBUTE } from './dynamodb-table.js';

const pk = (rule: string) => `counts#${rule}`;
/** Fixed width, so the sort keys order as the numbers. */
const hourSk = (hour: number) => `hour#${String(hour).padStart(15, '0')}`;

/** The counters over `table` (keys as the index's). */
export function createDynamoDbCounters(opts: { client: DynamoDBClient; table: string }): RuleCounters {
  const doc = DynamoDBDocumentClient.from(opts.client);
  const TableName = opts.table;
  const fromItem = (item: Record<string, unknown> | undefined): RuleCounts => {
    const c = noCounts();
    for (const f of COUNT_FIELDS) c[f] = Number(item?.[f] ?? 0);
    return c;
  };
  const adds = (counts: RuleCounts) => ({
    expression: COUNT_FIELDS.map((f) => `#${f} :${f}`).join(', '),
    names: Object.fromEntries(COUNT_FIELDS.map((f) => [`#${f}`, f])),
    values: Object.fromEntries(COUNT_FIELDS.map((f) => [`:${f}`, counts[f]])),
  });

  return {
    async add(rule, hour, counts, now) {
      const a = adds(counts);
      await doc.send(new UpdateCommand({
        TableName, Key: { pk: pk(rule), sk: hourSk(hour) },
        UpdateExpression: `ADD ${a.expression} SET #ttl = :ttl`,
        ExpressionAttributeNames: { ...a.names, '#ttl': TTL_ATTRIBUTE },
        ExpressionAttributeValues: { ...a.values, ':ttl': Math.ceil((hour + KEEP_BUCKETS_MS) / 1000) },
      }));
      await doc.send(new UpdateCommand({
        TableName, Key: { pk: pk(rule), sk: 'total' },
        UpdateExpression: `ADD ${a.expression} SET #firstAt = if_not_exists(#firstAt, :now)`,
        ExpressionAttributeNames: { ...a.names, '#firstAt': 'firstAt' },
        ExpressionAttributeValues: { ...a.values, ':now': now },
      }));
    },
    async read(rules, sinceHour) {
      return Promise.all(rules.map(async (rule) => {
        const recent = noCounts();
        let ExclusiveStartKey: Record<string, unknown> | undefined;
        for (let page = 0; page < 100; page++) {
          const res = await doc.send(new QueryCommand({
            TableName, KeyConditionExpression: 'pk = :pk AND sk BETWEEN :from AND :to',
            ExpressionAttributeValues: { ':pk': pk(rule), ':from': hourSk(sinceHour), ':to': 'hour#~' }, ExclusiveStartKey, ConsistentRead: true,
          }));
          for (const item of res.Items ?? []) addCounts(recent, fromItem(item));
          ExclusiveStartKey = res.LastEvaluatedKey;
          if (!ExclusiveStartKey) break;
        }
        const { Item } = await doc.send(new GetCommand({ TableName, Key: { pk: pk(rule), sk: 'total' }, ConsistentRead: true }));
        return { rule, recent, total: fromItem(Item), ...(typeof Item?.firstAt === 'number' ? { since: Item.firstAt } : {}) };
      }));
    },
  };
}
