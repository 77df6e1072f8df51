/**
 * The DynamoDB index table's definition (keys, the `due` GSI, billing, TTL) and the helpers tests and local
 * setups use to create and delete it. In AWS the stack (serverless.yml `Table`) creates the table: keep its
 * AttributeDefinitions / KeySchema / GlobalSecondaryIndexes identical to {@link TABLE_KEY_SCHEMA}.
 * Re-exported from `dynamodb-index.ts`; the item layout is documented there.
 */
import { createHash } from 'node:crypto';
import {
  CreateTableCommand, DeleteTableCommand, DynamoDBClient, UpdateTimeToLiveCommand, waitUntilTableExists,
  type CreateTableCommandInput,
} from '@aws-sdk/client-dynamodb';

/** Name of the DynamoDB TTL attribute (epoch seconds) on lease items. */
export const TTL_ATTRIBUTE = 'ttl';

/**
 * The sparse GSI on tags' due time: partition key `dueShard` (S, `due#<k>`), sort key `dueAt` (N, ms),
 * projecting ALL attributes. Only tag items with a `dueAt` carry the two attributes, so only they are indexed.
 */
export const DUE_INDEX = 'due';
/** Partitions of the `due` GSI: each tag lives in shard `due#<k>`, k = {@link dueShardOf}. */
export const DUE_SHARDS = 8;

/**
 * The `due` GSI shard of a tag: `due#<k>` with k = first 4 bytes of SHA-256(`<name>\n<tag>`) mod
 * {@link DUE_SHARDS}. Stable across processes and versions (a tag that changed shard would be listed twice
 * until rewritten), and spreads the due tags over partitions instead of one hot one.
 */
export function dueShardOf(name: string, tag: string): string {
  const h = createHash('sha256').update(`${name}\n${tag}`).digest();
  return `due#${h.readUInt32BE(0) % DUE_SHARDS}`;
}

/**
 * Definition of the index table (without `TableName`): string `pk` + `sk`, the {@link DUE_INDEX} GSI
 * (`dueShard` S + `dueAt` N, projection ALL), on-demand billing (so no throughput, on the table or the GSI).
 */
export const TABLE_KEY_SCHEMA = {
  AttributeDefinitions: [
    { AttributeName: 'pk', AttributeType: 'S' },
    { AttributeName: 'sk', AttributeType: 'S' },
    { AttributeName: 'dueShard', AttributeType: 'S' },
    { AttributeName: 'dueAt', AttributeType: 'N' },
  ],
  KeySchema: [
    { AttributeName: 'pk', KeyType: 'HASH' },
    { AttributeName: 'sk', KeyType: 'RANGE' },
  ],
  GlobalSecondaryIndexes: [
    {
      IndexName: DUE_INDEX,
      KeySchema: [
        { AttributeName: 'dueShard', KeyType: 'HASH' },
        { AttributeName: 'dueAt', KeyType: 'RANGE' },
      ],
      Projection: { ProjectionType: 'ALL' },
    },
  ],
  BillingMode: 'PAY_PER_REQUEST',
} satisfies Omit<CreateTableCommandInput, 'TableName'>;

/**
 * Creates the index table with {@link TABLE_KEY_SCHEMA}, waits (≤ `maxWaitSeconds`, default 60) until it is
 * ACTIVE, then enables TTL on {@link TTL_ATTRIBUTE}. For tests and local setups; in AWS the stack creates it.
 */
export async function createTable(client: DynamoDBClient, table: string, maxWaitSeconds = 60): Promise<void> {
  await client.send(new CreateTableCommand({ TableName: table, ...TABLE_KEY_SCHEMA }));
  await waitUntilTableExists({ client, maxWaitTime: maxWaitSeconds, minDelay: 1, maxDelay: 2 }, { TableName: table });
  await client.send(new UpdateTimeToLiveCommand({
    TableName: table, TimeToLiveSpecification: { AttributeName: TTL_ATTRIBUTE, Enabled: true },
  }));
}

/** Deletes the index table (tests). */
export async function deleteTable(client: DynamoDBClient, table: string): Promise<void> {
  await client.send(new DeleteTableCommand({ TableName: table }));
}
