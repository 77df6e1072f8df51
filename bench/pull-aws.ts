/**
 * Pull benchmark of the AWS backend (`npm run bench`): the local server with `PULLTHROUGH_BACKEND=aws` against
 * DynamoDB Local (AWS's own jar) and s3rver, fills in the server's process (as the `fill` function would run them),
 * skopeo as the client. The upstream is Debian's docker-registry behind a CDN front (test/support/cdn-front.ts):
 * blob GETs answer 307 to a credential-free URL on another host, as Docker Hub's do. Kinds, round-robin:
 *  - direct:        skopeo straight from the front (blobs from its CDN);
 *  - cold:          a fresh server on an empty table and bucket, `missMode: wait` (the blob is served from S3 once
 *                   filled, so every byte goes upstream → cache → S3 → client);
 *  - cold-redirect: the same with `missMode: redirect` (the client gets the CDN URL at once, the cache fills meanwhile);
 *  - warm:          one long-lived server whose cache holds the image;
 *  - warm-fresh:    a fresh server on that warm table and bucket (a new Lambda instance: nothing remembered).
 * Per pull, the DynamoDB requests each server made are counted at a counting proxy in front of DynamoDB Local (by
 * `X-Amz-Target`), and its fills' MB/s read from its log. Then two servers on one store: one fills a layer from a
 * CDN slowed to 8 MB/s while three requests for it wait in the other, whose DynamoDB requests per waited second per
 * waiting request are counted (target < 2).
 *
 * Environment: BENCH_ROUNDS (default 3), BENCH_TIMEOUT_MS (default 1 500 000), BENCH_LOG_LEVEL (INFO).
 * Output: a table and `bench/results/pull-aws-<time>.json`. Exit 1 on a failed pull, not on a missed target.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { createTable } from '../shared/store/dynamodb-index.js';
import { startCdnFront, type CdnFront } from '../test/support/cdn-front.js';
import { startCountingProxy, type CountingProxy } from '../test/support/counting-proxy.js';
import { startDynamoDbLocal, type DynamoDbLocal } from '../test/support/dynamodb-local.js';
import { pushLargeImage } from '../test/support/images.js';
import type { LocalServer } from '../test/support/local-server.js';
import { awsBackendEnv, createBucket, s3ClientFor, startS3rver, S3RVER_CREDENTIALS, type S3rverInstance } from '../test/support/s3rver.js';
import { imageRef } from '../test/support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { breakdown, createFleet, printTable, readLogFrom, roundRobin, summarize, timedPull, type PullKind } from './pull-kit.js';
import { cleanupOnSignals, describeSources, fileStamp, gitState, intEnv, median, runBench, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 3, 1);
const TOTAL_TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 1_500_000, 10_000);
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL || 'INFO';
const MIN_BYTES = 110 * 1024 * 1024;
const NAME = 'bench/large';
const TAG = 'v1';
const WAIT_CDN_BYTES_PER_SECOND = 8_000_000;
const WAITERS = 3;
const TARGETS: Record<string, number> = { warm: 1.1, 'cold-redirect': 1.3 };

let dynamo: DynamoDbLocal | undefined;
let s3: S3rverInstance | undefined;
let upstream: UpstreamRegistry | undefined;
const stoppers: Array<() => Promise<void>> = [];
const fleet = createFleet(async () => {
  for (const stop of stoppers.reverse()) await stop().catch(() => undefined);
  await Promise.all([dynamo?.stop(), s3?.stop(), upstream?.stop()]);
});
cleanupOnSignals(() => fleet.cleanup());

const READS = new Set(['GetItem', 'BatchGetItem', 'Query', 'Scan']);
/** DynamoDB operations a proxy saw since `from`, by name. */
function operations(proxy: CountingProxy, from: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of proxy.requests.slice(from)) {
    const op = r.amzTarget?.split('.')[1] ?? 'other';
    out[op] = (out[op] ?? 0) + 1;
  }
  return out;
}
const readsOf = (ops: Record<string, number>) => Object.entries(ops).reduce((n, [op, c]) => n + (READS.has(op) ? c : 0), 0);

async function main(): Promise<number> {
  const startedAt = new Date();
  const git = gitState();
  console.log(`pullthrough AWS-backend pull benchmark (DynamoDB Local + s3rver): ${ROUNDS} rounds, node ${process.version}`);
  console.log(describeSources(git));
  [dynamo, s3, upstream] = await Promise.all([startDynamoDbLocal(), startS3rver(), startUpstreamRegistry()]);
  const front = await startCdnFront(upstream.url, upstream.dataDir);
  stoppers.push(() => front.stop());
  const slow = await startCdnFront(upstream.url, upstream.dataDir, { cdnBytesPerSecond: WAIT_CDN_BYTES_PER_SECOND });
  stoppers.push(() => slow.stop());
  const image = await pushLargeImage(upstream.url, NAME, TAG, { minBytes: MIN_BYTES, layers: 4 });
  const totalBytes = image.blobs.reduce((a, b) => a + b.size, 0);
  console.log(`image: ${NAME}:${TAG}, ${(totalBytes / 2 ** 20).toFixed(1)} MiB in ${image.blobs.length - 1} layers + config`);
  const ddb = new DynamoDBClient({ endpoint: dynamo.endpoint, region: 'us-east-1', credentials: S3RVER_CREDENTIALS });
  const s3c = s3ClientFor(s3.endpoint);
  stoppers.push(async () => {
    ddb.destroy();
    s3c.destroy();
  });
  let stores = 0;
  /** A new, empty table and bucket. */
  const newStore = async () => {
    const name = `bench-${++stores}`;
    await Promise.all([createTable(ddb, name), createBucket(s3c, name)]);
    return name;
  };
  /** A server on `store` behind its own DynamoDB counting proxy. */
  const startServer = async (store: string, via: CdnFront, missMode: 'wait' | 'redirect' = 'wait') => {
    const proxy = await startCountingProxy(dynamo!.endpoint);
    stoppers.push(() => proxy.stop());
    const rule = { prefix: 'local', upstream: via.url, insecureRedirectHosts: [via.cdnHost], missMode };
    const server = await fleet.start({ rules: [rule] }, {
      env: { PULLTHROUGH_LOG_LEVEL: LOG_LEVEL, ...awsBackendEnv({ dynamodb: proxy.url, s3: s3!.endpoint, table: store }) },
    });
    return { server, proxy };
  };
  const ref = (s: LocalServer) => imageRef(s.url, `local/${NAME}`, TAG);
  /** One timed pull through `server`, with its log's view and its DynamoDB operations. */
  const measured = async ({ server, proxy }: { server: LocalServer; proxy: CountingProxy }) => {
    const logFrom = readLogFrom(server.logPath, 0).offset;
    const opsFrom = proxy.requests.length;
    const ms = await timedPull(ref(server), image);
    const b = breakdown(readLogFrom(server.logPath, logFrom).lines);
    const ops = operations(proxy, opsFrom);
    const extra: Record<string, number> = { registryRequests: b.registryRequests, dynamoReads: readsOf(ops), dynamoRequests: Object.values(ops).reduce((a, c) => a + c, 0) };
    for (const [op, c] of Object.entries(ops)) extra[`op.${op}`] = c;
    return { ms, server: b, extra };
  };
  const cold = (kind: string, missMode: 'wait' | 'redirect'): PullKind => ({
    kind,
    async run() {
      const s = await startServer(await newStore(), front, missMode);
      try {
        return await measured(s);
      } finally {
        await fleet.stop(s.server);
      }
    },
  });
  const warmStore = await newStore();
  const warm = await startServer(warmStore, front);
  await timedPull(ref(warm.server), image); // prime
  await timedPull(imageRef(front.url, NAME, TAG), image); // page cache, skopeo binary
  const kinds: PullKind[] = [
    { kind: 'direct', run: async () => ({ ms: await timedPull(imageRef(front.url, NAME, TAG), image) }) },
    cold('cold', 'wait'),
    cold('cold-redirect', 'redirect'),
    { kind: 'warm', run: () => measured(warm) },
    {
      kind: 'warm-fresh',
      async run() {
        const s = await startServer(warmStore, front);
        try {
          return await measured(s);
        } finally {
          await fleet.stop(s.server);
        }
      },
    },
  ];
  const samples = await roundRobin(ROUNDS, kinds);
  const summary = summarize(samples, kinds.map((k) => k.kind));
  printTable(summary, TARGETS);

  const perKind = Object.fromEntries(kinds.slice(1).map(({ kind }) => {
    const xs = samples.filter((s) => s.kind === kind && s.extra);
    const readsPerRequest = median(xs.map((s) => s.extra!.dynamoReads / Math.max(1, s.extra!.registryRequests)));
    const fillMBps = xs.flatMap((s) => s.server?.fills.mbPerSecond ?? []);
    return [kind, {
      registryRequests: median(xs.map((s) => s.extra!.registryRequests)), dynamoReads: median(xs.map((s) => s.extra!.dynamoReads)),
      dynamoRequests: median(xs.map((s) => s.extra!.dynamoRequests)), readsPerRegistryRequest: Math.round(readsPerRequest * 100) / 100,
      ...(fillMBps.length ? { fillMBpsMedian: median(fillMBps) } : {}),
    }];
  }));
  console.log('\nper pull (medians): registry requests, DynamoDB reads and requests, reads per registry request, fill MB/s');
  for (const [kind, v] of Object.entries(perKind)) console.log(`  ${kind.padEnd(14)} ${JSON.stringify(v)}`);
  const directMBps = Math.round(totalBytes / 1e3 / summary.stats.direct.medianMs);
  console.log(`  direct pull throughput ${directMBps} MB/s (the line speed fills compare to)`);

  const waiting = await measureWaiting(await newStore(), slow, image.blobs.slice(1).sort((a, b) => b.size - a.size)[0].digest, startServer);
  console.log(`\nwaiting: ${WAITERS} requests in a second server waited ${waiting.waitedSeconds.toFixed(1)} s in all for a fill held by the first; ` +
    `${waiting.requests} DynamoDB requests (${JSON.stringify(waiting.ops)}) = ${waiting.perWaitedSecond.toFixed(2)} per waited second per waiting request (target < 2)`);
  writeResults('pull-aws', fileStamp(startedAt), {
    benchmark: 'pull-aws', startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), rounds: ROUNDS, git,
    image: { totalBytes, layers: image.blobs.length - 1 }, targets: TARGETS, ...summary, perKind, directMBps, waiting, samples,
  });
  return 0;
}

/**
 * Server A fills `digest` from the slowed CDN (its GET waits for the commit); meanwhile WAITERS GETs of it in server
 * B wait on A's lease. B's DynamoDB requests over the waiters' summed waiting time.
 */
async function measureWaiting(
  store: string,
  slow: CdnFront,
  digest: string,
  startServer: (store: string, via: CdnFront) => Promise<{ server: LocalServer; proxy: CountingProxy }>,
) {
  const a = await startServer(store, slow);
  const b = await startServer(store, slow);
  const get = async (s: LocalServer) => {
    const t0 = performance.now();
    const res = await fetch(`${s.url}/v2/local/${NAME}/blobs/${digest}`, { redirect: 'manual', signal: AbortSignal.timeout(60_000) });
    await res.arrayBuffer();
    if (res.status !== 307) throw new Error(`waiting benchmark: ${s.url} answered ${res.status}`);
    return (performance.now() - t0) / 1000;
  };
  const filling = get(a.server);
  await new Promise((r) => setTimeout(r, 500)); // A holds the lease and is filling
  const from = b.proxy.requests.length;
  const waited = await Promise.all(Array.from({ length: WAITERS }, () => get(b.server)));
  await filling;
  const ops = operations(b.proxy, from);
  const requests = Object.values(ops).reduce((x, c) => x + c, 0);
  const waitedSeconds = waited.reduce((x, s) => x + s, 0);
  return { waitedSeconds, perRequestSeconds: waited, requests, ops, perWaitedSecond: requests / waitedSeconds };
}

runBench('the AWS-backend benchmark', TOTAL_TIMEOUT_MS, main, () => fleet.cleanup());
