/**
 * `npx tsx bench/gc-scale.ts [embedded|aws|all]`: one GC pass over a synthetic cache of BENCH_GC_BLOBS blobs
 * (default 100,000) and BENCH_GC_TAGS tags (default 20,000: one manifest each, 5 blobs per manifest, 10 tags per
 * repository; BENCH_GC_GARBAGE_PCT of the blobs, default 10, referenced by nothing and days old), on the embedded
 * store (SQLite + files) and on DynamoDB Local + s3rver. The store is seeded in this process; the pass runs in a
 * fresh child process, which reports its time, peak RSS and the store requests it made (DynamoDB/S3 by operation;
 * SQLite/filesystem by port method). Also: the extra store writes of 1,000 warm pulls (last-pulled times).
 * Results: a table on stdout and `bench/results/gc-scale-<time>.json`.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, promises as fs, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import pLimit from 'p-limit';
import type { Digest } from '../shared/oci/digest.js';
import { createDynamoDbIndex, createTable } from '../shared/store/dynamodb-index.js';
import { openSqliteIndex } from '../shared/store/sqlite-index.js';
import { DYNAMODB_LOCAL_CLIENT_CONFIG, startDynamoDbLocal } from '../test/support/dynamodb-local.js';
import { createBucket, s3ClientFor, startS3rver } from '../test/support/s3rver.js';
import { intEnv, RESULTS_DIR, ROOT } from './support.js';
import { warmPullWrites } from './gc-warm-pulls.js';

const BLOBS = intEnv('BENCH_GC_BLOBS', 100_000, 10);
const TAGS = intEnv('BENCH_GC_TAGS', 20_000, 1);
const GARBAGE_PCT = intEnv('BENCH_GC_GARBAGE_PCT', 10, 0);
const OLD_MS = Date.now() - 3 * 24 * 3600 * 1000;
const MEDIA = 'application/vnd.oci.image.manifest.v1+json';
const sha = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}` as Digest;

/** The synthetic cache: tag i in repository `bench/r<i / 10>`, its manifest referencing 5 referenced blobs. */
function* layout() {
  const referenced = Math.floor(BLOBS * (1 - GARBAGE_PCT / 100));
  const perManifest = Math.max(1, Math.floor(referenced / TAGS));
  for (let i = 0; i < TAGS; i++) {
    const blobs = Array.from({ length: perManifest }, (_, k) => sha(`blob ${i * perManifest + k}`));
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA, config: { digest: blobs[0], size: 64 }, layers: blobs.slice(1).map((d) => ({ digest: d, size: 64 })) }));
    yield { name: `bench/r${Math.floor(i / 10)}`, tag: `t${i}`, body, blobs };
  }
}
const blobBytes = (d: string) => Buffer.from(`${d.slice(7, 70)}\n`); // 64 bytes
const allBlobs = () => Array.from({ length: BLOBS }, (_, i) => sha(`blob ${i}`));

async function seedEmbedded(dir: string): Promise<void> {
  const index = openSqliteIndex(join(dir, 'index.db'));
  for (const m of layout()) {
    const digest = sha(m.body.toString());
    await index.putManifest({ name: m.name, digest, mediaType: MEDIA, size: m.body.length, body: m.body, pulledAt: Date.now() }, m.blobs, 'bench');
    await index.putTag({ name: m.name, tag: m.tag, digest, mediaType: MEDIA, size: m.body.length, fetchedAt: Date.now(), checkedAt: Date.now(), pulledAt: Date.now() });
  }
  await index.putLifecycleState('references', 'v1');
  index.close();
  // Blob files written directly in the store's layout (blobs/sha256/<hex>), days old.
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  for (const d of allBlobs()) {
    const path = join(dir, 'blobs', 'sha256', d.slice(7));
    writeFileSync(path, blobBytes(d));
    await fs.utimes(path, OLD_MS / 1000, OLD_MS / 1000);
  }
}

async function seedAws(dynamo: DynamoDBClient, s3: S3Client, table: string, bucket: string): Promise<void> {
  const index = createDynamoDbIndex({ client: dynamo, table, now: () => OLD_MS });
  const limit = pLimit(16);
  await Promise.all([...layout()].map((m) => limit(async () => {
    const digest = sha(m.body.toString());
    await index.putManifest({ name: m.name, digest, mediaType: MEDIA, size: m.body.length, body: m.body, pulledAt: Date.now() }, m.blobs, 'bench');
    await index.putTag({ name: m.name, tag: m.tag, digest, mediaType: MEDIA, size: m.body.length, fetchedAt: Date.now(), checkedAt: Date.now(), pulledAt: Date.now() });
  })));
  await index.putLifecycleState('references', 'v1');
  await Promise.all(allBlobs().map((d) => limit(async () => {
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `blobs/sha256/${d.slice(7)}`, Body: blobBytes(d) }));
    await index.putBlobRecord(d, 64); // committedAt: days ago (the index's clock above)
  })));
}

/** Runs one pass in a fresh process (bench/gc-pass.ts) with `env`; returns its JSON line. */
function runPass(env: Record<string, string>): Record<string, unknown> {
  const config = join(ROOT, '.bench-gc', 'config.yml');
  writeFileSync(config, 'rules:\n  - prefix: bench\n    upstream: https://registry.invalid\n');
  env.PULLTHROUGH_CONFIG = config;
  const r = spawnSync(process.execPath, ['--openssl-legacy-provider', '--import', 'tsx', join(ROOT, 'bench', 'gc-pass.ts')], {
    cwd: ROOT, env: { ...process.env, PULLTHROUGH_LOG_LEVEL: 'WARN', ...env }, encoding: 'utf8', timeout: 3_600_000, maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`gc pass failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

const which = process.argv[2] ?? 'all';
const results: Record<string, unknown> = { blobs: BLOBS, tags: TAGS, garbagePct: GARBAGE_PCT, at: new Date().toISOString() };
results.warmPulls = await warmPullWrites(1000);
console.log(`warm pulls: ${JSON.stringify(results.warmPulls)}`);

if (which === 'embedded' || which === 'all') {
  const dir = join(ROOT, '.bench-gc', 'embedded');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const seeded = Date.now();
  await seedEmbedded(dir);
  console.log(`embedded: seeded in ${Date.now() - seeded} ms`);
  results.embedded = runPass({ PULLTHROUGH_DATA_DIR: dir, PULLTHROUGH_BACKEND: 'embedded' });
  console.log(`embedded: ${JSON.stringify(results.embedded)}`);
  rmSync(dir, { recursive: true, force: true });
}

if (which === 'aws' || which === 'all') {
  const work = join(ROOT, '.bench-gc', 'aws');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const [ddb, s3rver] = await Promise.all([startDynamoDbLocal(), startS3rver({ directory: join(work, 's3rver') })]);
  try {
    const dynamo = new DynamoDBClient({ ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint: ddb.endpoint });
    const s3 = s3ClientFor(s3rver.endpoint);
    await createTable(dynamo, 'bench');
    await createBucket(s3, 'bench');
    const seeded = Date.now();
    await seedAws(dynamo, s3, 'bench', 'bench');
    console.log(`aws: seeded in ${Date.now() - seeded} ms`);
    results.aws = runPass({
      PULLTHROUGH_BACKEND: 'aws', PULLTHROUGH_TABLE: 'bench', PULLTHROUGH_BUCKET: 'bench',
      AWS_ENDPOINT_URL_DYNAMODB: ddb.endpoint, AWS_ENDPOINT_URL_S3: s3rver.endpoint, AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER',
      AWS_REQUEST_CHECKSUM_CALCULATION: 'WHEN_REQUIRED', AWS_RESPONSE_CHECKSUM_VALIDATION: 'WHEN_REQUIRED',
    });
    console.log(`aws: ${JSON.stringify(results.aws)}`);
    dynamo.destroy();
    s3.destroy();
  } finally {
    await ddb.stop();
    await s3rver.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
mkdirSync(RESULTS_DIR, { recursive: true });
writeFileSync(join(RESULTS_DIR, `gc-scale-${new Date().toISOString().replace(/[:.]/g, '-')}.json`), JSON.stringify(results, null, 2));
