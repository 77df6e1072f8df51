/**
 * Composition root: builds the registry and its dependencies once per process from the environment.
 * Backends (`PULLTHROUGH_BACKEND`):
 * - `embedded` (default): SQLite `<data dir>/index.db` + the filesystem `<data dir>/blobs`;
 * - `aws`: DynamoDB (`PULLTHROUGH_TABLE`) + S3 (`PULLTHROUGH_BUCKET`); endpoints from the SDK's standard
 *   `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_S3`, so the same build runs against real AWS or stand-ins.
 * Client auth (`auth.mode` token | iam): shared/auth/setup.ts builds the guard and `/token`, and refuses mode
 * `none` when `PULLTHROUGH_REQUIRE_AUTH=true`.
 * AWS SDK imports stay here and in the AWS adapters.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from '@aws-lambda-powertools/logger';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { S3Client } from '@aws-sdk/client-s3';
import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { assertAuthAllowed, buildClientAuth } from './auth/setup.js';
import { assertServable, loadConfig, loadSettings, type Environment, type PullThroughCacheRule, type RegistryConfig } from './config.js';
import { graceSecondsFor } from './config-lifecycle.js';
import { createLogger } from './logger.js';
import type { PrometheusMetrics } from './observe/prometheus.js';
import type { EmfMetrics } from './observe/emf.js';
import type { ManifestService } from './registry/manifests.js';
import type { StatsRecorder } from './registry/stats.js';
import { noMetrics } from './observe/metrics.js';
import { buildMetricsOutputs } from './runtime-metrics.js';
import type { RuleCounters } from './store/counters.js';
import { createDynamoDbCounters } from './store/dynamodb-counters.js';
import { createRegistry, type RegistryApp } from './registry/app.js';
import type { BlobService } from './registry/blobs.js';
import type { FillJob, TagChange } from './registry/deps.js';
import { createLifecycle, type Lifecycle } from './registry/lifecycle/index.js';
import { createRefresher, type Refresher } from './registry/refresh.js';
import { createMirrorNames, createRuleResolver } from './registry/rules.js';
import { createDynamoDbIndex } from './store/dynamodb-index.js';
import { openFsBlobStore, type FsBlobStore } from './store/fs-blob-store.js';
import type { Stores } from './store/ports.js';
import { rememberingStores, rememberMsFor } from './store/remembering-stores.js';
import { createS3BlobStore } from './store/s3-blob-store.js';
import { createUpstreamClient, type UpstreamClient } from './upstream/client.js';
import { credentialsForRule } from './upstream/credentials.js';
import { createSecretsManagerReader } from './aws-secrets.js';

/** Everything a process entry point needs. */
export interface Runtime {
  env: Environment;
  config: RegistryConfig;
  app: RegistryApp;
  blobs: BlobService;
  refresher: Refresher;
  /** GC, purge, ls, verify (shared/registry/lifecycle/). */
  lifecycle: Lifecycle;
  logger: Logger;
  /** Powertools metrics (EMF): `TagMoved` per digest change; handlers flush them. */
  metrics: Metrics;
  /** The manifest service (prefetch and the scheduled pass read manifests through it). */
  manifests: ManifestService;
  /** The per-rule counters `stats` reads (in the index), and the recorder that adds to them in batches. */
  counters: RuleCounters;
  stats: StatsRecorder;
  /** The CloudWatch EMF output of the core's metrics (on Lambda); each handler flushes it (functions/flush-metrics.ts). */
  emf?: EmfMetrics;
  /** The Prometheus output of the core's metrics, when `PULLTHROUGH_METRICS_PORT` asks for it (local server). */
  prometheus?: PrometheusMetrics;
  /** The embedded blob store, whose signed URLs the local server serves (embedded backend only). */
  blobStore?: FsBlobStore;
  /** Closes the stores (call `stats.close()` first: it writes the counts not yet written). */
  close(): void;
}

async function buildStores(env: Environment): Promise<{ stores: Stores; counters: RuleCounters; blobStore?: FsBlobStore; close(): void }> {
  if (env.backend === 'aws') {
    // Custom endpoints (MinIO, s3rver) want path-style addressing; checksum behaviour follows the SDK's own
    // AWS_REQUEST_CHECKSUM_CALCULATION / AWS_RESPONSE_CHECKSUM_VALIDATION variables.
    const s3 = new S3Client({ forcePathStyle: env.s3Endpoint !== undefined });
    const dynamo = new DynamoDBClient({});
    // Blob records need no large-object store; the manifest items do (S3 `manifests/`): two views, one table.
    const records = createDynamoDbIndex({ client: dynamo, table: env.table! });
    const blobs = createS3BlobStore({ client: s3, bucket: env.bucket!, records, urlTtlSeconds: env.urlTtlSeconds });
    const index = createDynamoDbIndex({ client: dynamo, table: env.table!, largeObjects: blobs });
    return {
      stores: { tags: index, manifests: index, links: index, blobs, leases: index, listings: index, lifecycle: index, reaper: blobs },
      counters: createDynamoDbCounters({ client: dynamo, table: env.table! }),
      close: () => {
        s3.destroy();
        dynamo.destroy();
      },
    };
  }
  const dataDir = resolve(env.dataDir);
  mkdirSync(dataDir, { recursive: true });
  // Loaded only for the embedded backend: better-sqlite3 is a native addon the Lambda bundle leaves out.
  // A missing native binding throws an error that says what to run (store/sqlite-binding.ts).
  const { openSqliteIndex, openSqliteCounters } = await import('./store/sqlite-index.js');
  const index = openSqliteIndex(join(dataDir, 'index.db'));
  const counters = openSqliteCounters(join(dataDir, 'index.db'));
  const blobStore = await openFsBlobStore(dataDir, { urlTtlSeconds: env.urlTtlSeconds });
  return {
    stores: { tags: index, manifests: index, links: index, blobs: blobStore, leases: index, listings: index, lifecycle: index, reaper: blobStore },
    counters,
    blobStore,
    close: () => {
      counters.close();
      index.close();
    },
  };
}

/** Invokes the fill function asynchronously (`InvocationType: Event`, up to 15 min of fill time). */
function lambdaFillDispatcher(functionName: string): (job: FillJob) => Promise<void> {
  const lambda = new LambdaClient({});
  return async (job) => {
    await lambda.send(new InvokeCommand({ FunctionName: functionName, InvocationType: 'Event', Payload: Buffer.from(JSON.stringify(job)) }));
  };
}

/** Publishes each tag change as an EventBridge event (`source: pullthrough`, `detail-type: Tag Moved`). */
function eventBridgePublisher(bus: string): (change: TagChange) => Promise<void> {
  const events = new EventBridgeClient({});
  return async (change) => {
    await events.send(new PutEventsCommand({ Entries: [{ EventBusName: bus, Source: 'pullthrough', DetailType: 'Tag Moved', Detail: JSON.stringify(change) }] }));
  };
}

/** Builds a runtime from explicit settings (tests use this with their own data dir and rules). */
export async function buildRuntime(env: Environment, config: RegistryConfig = loadConfig(env.configPath)): Promise<Runtime> {
  // Refuses auth.mode none where auth is required (PULLTHROUGH_REQUIRE_AUTH), and manifests larger than a Lambda
  // response can carry, before anything is opened.
  assertAuthAllowed(env, config);
  assertServable(env, config);
  // Refuses a lifecycle grace period a signed URL could outlive (before anything is opened).
  const graceSeconds = graceSecondsFor(config.lifecycle, env.urlTtlSeconds);
  const logger = createLogger(env.logLevel);
  const built = await buildStores(env);
  const { counters, blobStore, close } = built;
  // Committed blob sizes, links and manifests by digest are remembered for at most half the grace period.
  const stores = rememberingStores(built.stores, { ttlMs: rememberMsFor(graceSeconds), now: Date.now });
  let lifecycle: Lifecycle | undefined;
  const outputs = await buildMetricsOutputs(env, { counters, log: logger, lifecycle: () => lifecycle });
  const coreMetrics = env.accounting ? outputs.metrics : noMetrics;
  const clients = new Map<string, UpstreamClient>();
  const readSecret = createSecretsManagerReader();
  const upstreamFor = (rule: PullThroughCacheRule) => {
    let c = clients.get(rule.prefix);
    if (!c) {
      c = createUpstreamClient(rule, { credentials: credentialsForRule(rule, readSecret), proxy: env.proxy, observer: { metrics: coreMetrics, log: logger } });
      clients.set(rule.prefix, c);
    }
    return c;
  };
  const metrics = new Metrics({ namespace: 'pullthrough', serviceName: 'pullthrough' });
  const publish = env.eventBus ? eventBridgePublisher(env.eventBus) : undefined;
  const deps = {
    stores,
    resolve: createRuleResolver(config.rules),
    mirrorName: createMirrorNames(config.rules, config.defaultRule),
    upstreamFor,
    maxManifestBytes: config.maxManifestBytes,
    fill: config.blobFill,
    dispatchFill: env.fillFunction ? lambdaFillDispatcher(env.fillFunction) : undefined,
    log: logger,
    metrics: coreMetrics,
    now: Date.now,
    onTagMoved: async (change: TagChange) => {
      metrics.addMetric('TagMoved', MetricUnit.Count, 1);
      await publish?.(change);
    },
    lifecycle: { touchIntervalSeconds: config.lifecycle.touchIntervalSeconds },
  };
  const names = { prefixes: config.rules.map((r) => r.prefix), mirrorName: deps.mirrorName, resolve: deps.resolve };
  const auth = await buildClientAuth({ env, config, names, log: logger, now: Date.now });
  // PULLTHROUGH_ACCOUNTING=off: the same cache with nothing recorded (the metrics benchmark's baseline).
  const { app, blobs, manifests } = createRegistry(deps, { auth, accounting: env.accounting });
  const refresher = createRefresher(deps, manifests, config.refresh);
  lifecycle = createLifecycle(deps, config, graceSeconds);
  const { emf, prometheus, stats } = outputs;
  return { env, config, app, blobs, manifests, refresher, lifecycle, logger, metrics, emf, prometheus, stats, counters, blobStore, close };
}

let current: Promise<Runtime> | undefined;

/** The process-wide runtime, built from the environment on first use. */
export function getRuntime(): Promise<Runtime> {
  // A bad environment or config rejects the promise with every problem of both (entry points print them, no stack).
  current ??= Promise.resolve().then(() => {
    const { env, config } = loadSettings();
    return buildRuntime(env, config);
  });
  return current;
}
