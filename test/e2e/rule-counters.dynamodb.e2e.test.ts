/**
 * The stats counters contract over the DynamoDB adapter, against DynamoDB Local (a new table per test, created as
 * the stack creates it), plus the item layout: hour buckets carry the table's TTL attribute (two days after the
 * hour), the total its first time.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { HOUR_MS, KEEP_BUCKETS_MS, noCounts } from '../../shared/store/counters.js';
import { createDynamoDbCounters } from '../../shared/store/dynamodb-counters.js';
import { createTable, deleteTable } from '../../shared/store/dynamodb-index.js';
import { describeRuleCountersContract } from '../contract/rule-counters.contract.js';
import { DYNAMODB_LOCAL_CLIENT_CONFIG, startDynamoDbLocal, type DynamoDbLocal } from '../support/dynamodb-local.js';

let ddb: DynamoDbLocal;
let client: DynamoDBClient;
let tables = 0;

beforeAll(async () => {
  ddb = await startDynamoDbLocal();
  client = new DynamoDBClient({ ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint: ddb.endpoint });
});
afterAll(async () => {
  client?.destroy();
  await ddb?.stop();
});

async function openTable() {
  const table = `counters-${process.pid}-${++tables}`;
  await createTable(client, table);
  return { table, counters: createDynamoDbCounters({ client, table }), second: createDynamoDbCounters({ client, table }), close: () => deleteTable(client, table) };
}

describeRuleCountersContract('DynamoDB Local', async () => openTable());

it('DynamoDB items: an hour bucket expires by TTL two days after its hour; the total keeps firstAt', async () => {
  const { table, counters, close } = await openTable();
  try {
    const hour = 1_800_000_000_000 - (1_800_000_000_000 % HOUR_MS);
    await counters.add('hub', hour, { ...noCounts(), requests: 2 }, hour + 42);
    const doc = DynamoDBDocumentClient.from(client);
    const bucket = (await doc.send(new GetCommand({ TableName: table, Key: { pk: 'counts#hub', sk: `hour#${String(hour).padStart(15, '0')}` } }))).Item;
    expect(bucket).toMatchObject({ requests: 2, ttl: Math.ceil((hour + KEEP_BUCKETS_MS) / 1000) });
    const total = (await doc.send(new GetCommand({ TableName: table, Key: { pk: 'counts#hub', sk: 'total' } }))).Item;
    expect(total).toMatchObject({ requests: 2, firstAt: hour + 42 });
  } finally {
    await close();
  }
});
