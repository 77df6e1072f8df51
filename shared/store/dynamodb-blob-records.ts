/**
 * Blob records of the DynamoDB index (`pk=blob#<digest>, sk=blob`): the commit point of the S3 blob store, and
 * the tombstones the garbage collector turns them into. A record with `unpublishedAt` (ms) is a tombstone: the
 * blob is not served (`getBlobRecord` → undefined, so the next pull refills it) while its S3 object is kept for
 * the grace period, so presigned URLs handed out before still work. A refill's commit replaces the tombstone.
 * Every change is one conditional write, so it is atomic against concurrent commits.
 */
import { DeleteCommand, PutCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { conditionalWrite, type DynamoDbContext } from './dynamodb-context.js';
import type { BlobRecords } from './ports.js';

/** The {@link BlobRecords} port over the index's table. */
export function createDynamoDbBlobRecords(ctx: DynamoDbContext): BlobRecords {
  const { doc, TableName, now, get } = ctx;
  const Key = (digest: string) => ({ pk: `blob#${digest}`, sk: 'blob' });
  const names = { '#pk': 'pk', '#u': 'unpublishedAt' };
  const conditional = conditionalWrite;

  return {
    async getBlobRecord(digest) {
      const item = await get(`blob#${digest}`, 'blob');
      return item && item.unpublishedAt === undefined ? { size: item.size as number, committedAt: item.committedAt as number } : undefined;
    },

    async putBlobRecord(digest, size) {
      // The first commit wins, so committedAt keeps the time the bytes were first verified; a tombstone is
      // replaced (the bytes were just uploaded and verified again).
      await conditional(() => doc.send(new PutCommand({
        TableName, Item: { ...Key(digest), size, committedAt: now() },
        ConditionExpression: 'attribute_not_exists(#pk) OR attribute_exists(#u)', ExpressionAttributeNames: names,
      })));
    },

    async getBlobRecordState(digest) {
      const item = await get(`blob#${digest}`, 'blob');
      if (!item) return undefined;
      return {
        size: item.size as number, committedAt: item.committedAt as number,
        ...(typeof item.unpublishedAt === 'number' ? { unpublishedAt: item.unpublishedAt } : {}),
      };
    },

    async unpublishBlobRecord(digest, at) {
      return conditional(() => doc.send(new UpdateCommand({
        TableName, Key: Key(digest), UpdateExpression: 'SET #u = :at',
        ConditionExpression: 'attribute_exists(#pk) AND attribute_not_exists(#u)', ExpressionAttributeNames: names,
        ExpressionAttributeValues: { ':at': at },
      })));
    },

    async republishBlobRecord(digest) {
      return conditional(() => doc.send(new UpdateCommand({
        TableName, Key: Key(digest), UpdateExpression: 'REMOVE #u', ConditionExpression: 'attribute_exists(#u)', ExpressionAttributeNames: { '#u': 'unpublishedAt' },
      })));
    },

    async deleteBlobRecord(digest, { onlyUnpublished }) {
      return conditional(() => doc.send(new DeleteCommand({
        TableName, Key: Key(digest),
        ConditionExpression: onlyUnpublished ? 'attribute_exists(#u)' : 'attribute_exists(#pk)',
        ExpressionAttributeNames: onlyUnpublished ? { '#u': 'unpublishedAt' } : { '#pk': 'pk' },
      })));
    },
  };
}
