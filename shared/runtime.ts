/**
 * Composition root: builds the registry app and its dependencies once per process from the environment.
 * The embedded backend is SQLite (`<data dir>/index.db`) + the filesystem (`<data dir>/blobs`).
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from '@aws-lambda-powertools/logger';
import { loadConfig, readEnvironment, type Environment, type PullThroughCacheRule, type RegistryConfig } from './config.js';
import { createLogger } from './logger.js';
import { createRegistryApp, type RegistryApp } from './registry/app.js';
import { createRuleResolver } from './registry/rules.js';
import { openFsBlobStore, type FsBlobStore } from './store/fs-blob-store.js';
import { openSqliteIndex } from './store/sqlite-index.js';
import { createUpstreamClient, type UpstreamClient } from './upstream/client.js';

/** Everything a process entry point needs. */
export interface Runtime {
  env: Environment;
  config: RegistryConfig;
  app: RegistryApp;
  logger: Logger;
  /** The embedded blob store (the local server serves its signed URLs). */
  blobStore: FsBlobStore;
  close(): void;
}

/** Builds a runtime from explicit settings (tests use this with their own data dir and rules). */
export async function buildRuntime(env: Environment, config: RegistryConfig = loadConfig(env.configPath)): Promise<Runtime> {
  const logger = createLogger(env.logLevel);
  const dataDir = resolve(env.dataDir);
  mkdirSync(dataDir, { recursive: true });
  const index = openSqliteIndex(join(dataDir, 'index.db'));
  const blobStore = await openFsBlobStore(dataDir);
  const clients = new Map<string, UpstreamClient>();
  const upstreamFor = (rule: PullThroughCacheRule) => {
    let c = clients.get(rule.prefix);
    if (!c) clients.set(rule.prefix, (c = createUpstreamClient(rule)));
    return c;
  };
  const app = createRegistryApp({
    stores: { tags: index, manifests: index, links: index, blobs: blobStore, leases: index },
    resolve: createRuleResolver(config.rules),
    upstreamFor,
    maxManifestBytes: config.maxManifestBytes,
    fill: config.blobFill,
    log: logger,
    now: Date.now,
  });
  return { env, config, app, logger, blobStore, close: () => index.close() };
}

let current: Promise<Runtime> | undefined;

/** The process-wide runtime, built from the environment on first use. */
export function getRuntime(): Promise<Runtime> {
  current ??= buildRuntime(readEnvironment());
  return current;
}
