/**
 * Large manifest bodies of the DynamoDB index (over `inlineLimitBytes`): S3 objects `manifests/<alg>/<hex>`, keyed
 * by digest, so one object serves every repository storing that manifest. Each manifest item whose body is there
 * has a body reference item (`pk=body#<digest>`, `sk=ref#<name>`, the item's `gen`), written before the item and
 * deleted after it, conditionally on its gen, exactly like the blob reference items (dynamodb-lifecycle.ts), so
 * "does a stored manifest still point to this object" is one Query of at most one item.
 *
 * Removing an object no reference names (the GC, {@link createManifestBodySweep}) races a writer storing that
 * same manifest again. Neither takes a lease; each looks again after its own step:
 * - the writer: object, reference, item; then one HEAD of the object, and a PUT of its bytes when it is gone;
 * - the GC: (past the grace period) read the object, find no reference, delete it; then look for a reference
 *   again and put the bytes it read back when there is one.
 * If the GC's second look found no reference, the writer's reference came after it, so after the delete, and the
 * writer's HEAD (after its reference) sees the object gone and restores it; if it found one, the GC restores it.
 * Either way a manifest item never ends pointing to a missing body. In between, a read of that item finds no body
 * and is a miss (getManifest: the registry fetches the manifest again); this happens only for a manifest that
 * nothing retained when the GC looked, while it is being stored again.
 */
import { QueryCommand } from '@aws-sdk/lib-dynamodb';
import { isDigest, parseDigest, type Digest } from '../oci/digest.js';
import type { DynamoDbContext, Item } from './dynamodb-context.js';
import type { LargeObjectStore, LifecycleIndex } from './ports.js';

/** Prefix of large manifest bodies in the large-object store. */
export const BODY_PREFIX = 'manifests/';

/** The object key of a large manifest body: `manifests/<algorithm>/<hex>`. @throws Error for a non-digest. */
export function largeObjectKey(digest: Digest): string {
  const parsed = parseDigest(digest);
  if (!parsed) throw new Error(`not a digest: ${digest.slice(0, 80)}`);
  return `${BODY_PREFIX}${parsed.algorithm}/${parsed.encoded}`;
}

/** The digest an object key names, or undefined for keys that are no body of ours. */
function digestOfKey(key: string): Digest | undefined {
  const m = /^manifests\/(sha256|sha512)\/([a-f0-9]+)$/.exec(key);
  const digest = m ? `${m[1]}:${m[2]}` : '';
  return isDigest(digest) ? digest : undefined;
}

/** The body reference item of manifest `<name>@<digest>` stored as `gen`. */
export const bodyRefItem = (digest: string, name: string, gen?: string): Item => ({
  pk: `body#${digest}`, sk: `ref#${name}`, ...(gen === undefined ? {} : { gen }),
});

/** The writer's look after its item: puts the body back when a GC removed it meanwhile (see the file header). */
export async function confirmBody(large: LargeObjectStore, key: string, body: Uint8Array): Promise<void> {
  if (!(await large.hasObject(key))) await large.putObject(key, body);
}

/** {@link LifecycleIndex.sweepManifestBodies} over the index's table and its large-object store. */
export function createManifestBodySweep(ctx: DynamoDbContext): NonNullable<LifecycleIndex['sweepManifestBodies']> {
  const { doc, TableName } = ctx;
  const referenced = async (digest: Digest) => {
    const res = await doc.send(new QueryCommand({
      TableName, KeyConditionExpression: '#pk = :pk', ExpressionAttributeNames: { '#pk': 'pk', '#sk': 'sk' },
      ExpressionAttributeValues: { ':pk': `body#${digest}` }, ProjectionExpression: '#sk', ConsistentRead: true, Limit: 1,
    }));
    return (res.Items?.length ?? 0) > 0;
  };

  return async function* sweepManifestBodies(after, { graceFrom, dryRun }) {
    const large = ctx.opts.largeObjects;
    if (!large) return;
    for await (const o of large.listObjects(BODY_PREFIX, after)) {
      const digest = digestOfKey(o.key);
      const kept = { key: o.key, size: o.size, removed: false };
      if (!digest || o.modified >= graceFrom || (await referenced(digest))) {
        yield kept;
        continue;
      }
      if (dryRun) {
        yield { ...kept, removed: true };
        continue;
      }
      const bytes = await large.getObject(o.key);
      if (!bytes) {
        yield kept; // gone meanwhile (another pass)
        continue;
      }
      await large.deleteObject(o.key);
      if (await referenced(digest)) {
        await large.putObject(o.key, bytes);
        yield kept;
        continue;
      }
      yield { ...kept, removed: true };
    }
  };
}
