/**
 * Builds the registry app on the embedded stores (SQLite in `<dir>/index.db`, blobs under the same temp
 * directory, as the local server lays out its data dir) with a controllable clock, for unit tests of the
 * cache logic. `dbPath` lets a test read every row (e.g. to prove a store unchanged). `extra.auth` turns client
 * auth on (the `auth` config section; the token key file lives in the temp dir, tokens follow the clock).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildClientAuth } from '../../shared/auth/setup.js';
import { parseConfig, type PullThroughCacheRule } from '../../shared/config.js';
import { createRegistry } from '../../shared/registry/app.js';
import { graceSecondsFor } from '../../shared/config-lifecycle.js';
import { createLifecycle } from '../../shared/registry/lifecycle/index.js';
import { createRefresher } from '../../shared/registry/refresh.js';
import type { FillJob, Log, RegistryDeps, TagChange } from '../../shared/registry/deps.js';
import { createMirrorNames, createRuleResolver } from '../../shared/registry/rules.js';
import type { RegistryResponse } from '../../shared/http/types.js';
import type { Metrics } from '../../shared/observe/metrics.js';
import type { BlobLinks, BlobReaper, BlobStore, FillLeases, LifecycleIndex, ListingCache, ManifestStore, TagIndex } from '../../shared/store/ports.js';
import { openFsBlobStore } from '../../shared/store/fs-blob-store.js';
import type { Stores } from '../../shared/store/ports.js';
import { rememberingStores, rememberMsFor } from '../../shared/store/remembering-stores.js';
import { openSqliteIndex } from '../../shared/store/sqlite-index.js';
import { createUpstreamClient, type UpstreamClient } from '../../shared/upstream/client.js';

export const silentLog: Log & { lines: Array<{ level: string; message: string; extra: unknown[] }> } = {
  lines: [],
  debug(message, ...extra) { silentLog.lines.push({ level: 'debug', message, extra }); },
  info(message, ...extra) { silentLog.lines.push({ level: 'info', message, extra }); },
  warn(message, ...extra) { silentLog.lines.push({ level: 'warn', message, extra }); },
  error(message, ...extra) { silentLog.lines.push({ level: 'error', message, extra }); },
};

/** One call the registry made to a store port: `port.method` and what it returned (resolved). */
export interface StoreCall {
  port: string;
  method: string;
  result?: unknown;
}

/** Wraps every method of every port so each call is recorded in `calls` (the ports themselves are unchanged). */
function countCalls(stores: Stores, calls: StoreCall[]): Stores {
  const wrapped = {} as Record<string, unknown>;
  for (const [port, impl] of Object.entries(stores) as Array<[string, object]>) {
    wrapped[port] = new Proxy(impl, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function' || typeof prop !== 'string') return value;
        return (...args: unknown[]) => {
          const call: StoreCall = { port, method: prop };
          calls.push(call);
          const out = (value as (...a: unknown[]) => unknown).apply(target, args);
          if (out instanceof Promise) void out.then((r) => (call.result = r), () => undefined);
          return out;
        };
      },
    });
  }
  return wrapped as unknown as Stores;
}

/** Stores a harness can run on instead of its embedded ones (see `extra.backend`). */
export interface HarnessBackend {
  index: TagIndex & ManifestStore & BlobLinks & FillLeases & ListingCache & LifecycleIndex;
  blobs: BlobStore & BlobReaper;
  /** GETs a blob location the registry answered with. */
  readLocation(url: string): Promise<Buffer>;
  /** Digests with an object in storage, whatever its state (to look at storage itself, not the index). */
  storageObjects(): Promise<string[]>;
}

export async function createHarness(
  rules: Array<Partial<PullThroughCacheRule> & { prefix: string; upstream: string }>,
  extra: {
    blobFill?: {
      waitSeconds?: number; maxHops?: number; leaseSeconds?: number; staleLeaseSeconds?: number; minBytesPerSecond?: number; deadlineGraceSeconds?: number;
    };
    defaultRule?: string;
    refresh?: { batchSize?: number; maxRunSeconds?: number; rateLimitRetries?: number; maxRetryAfterSeconds?: number };
    /** The `auth` config section (e.g. `{ mode: 'token', users: [...] }`). */
    auth?: unknown;
    /** The `lifecycle` config section. */
    lifecycle?: unknown;
    /**
     * Other stores than the default SQLite + files (e.g. DynamoDB Local + s3rver): the registry's deps use them;
     * `index` and `blobs` of the harness stay the embedded ones (unused then).
     */
    backend?: HarnessBackend;
    /**
     * Simulate AWS's asynchronous fill function: blob misses are dispatched (recorded in `fillJobs`) and run
     * `delayMs` later by the same `blobs.fill` code functions/fill.ts runs, instead of in the request.
     */
    dispatchFill?: { delayMs: number; failTimes?: number };
    /** Where the core and the upstream clients count (shared/observe/metrics.ts); default: nowhere. */
    metrics?: Metrics;
    /** `false`: the registry records nothing (createRegistry's `accounting`). */
    accounting?: boolean;
  } = {},
) {
  const { dispatchFill: _dispatchFill, backend: _backend, metrics, accounting, ...configExtra } = extra;
  const config = parseConfig({ rules, ...configExtra });
  const dir = mkdtempSync(join(tmpdir(), 'pt-unit-'));
  const dbPath = join(dir, 'index.db');
  const index = openSqliteIndex(dbPath);
  const blobs = await openFsBlobStore(dir);
  const clock = { now: Date.now() };
  const clients = new Map<string, UpstreamClient>();
  const changes: TagChange[] = [];
  const fillJobs: FillJob[] = [];
  let fillFunction: ((job: FillJob) => Promise<unknown>) | undefined;
  const storeCalls: StoreCall[] = [];
  let dispatchFailures = extra.dispatchFill?.failTimes ?? 0;
  const deps: RegistryDeps = {
    // As the runtime builds them: immutable reads remembered for half the grace period (store calls count what
    // reaches the stores underneath).
    stores: rememberingStores(
      countCalls(
        extra.backend
          ? { tags: extra.backend.index, manifests: extra.backend.index, links: extra.backend.index, blobs: extra.backend.blobs, leases: extra.backend.index, listings: extra.backend.index, lifecycle: extra.backend.index, reaper: extra.backend.blobs }
          : { tags: index, manifests: index, links: index, blobs, leases: index, listings: index, lifecycle: index, reaper: blobs },
        storeCalls,
      ),
      { ttlMs: rememberMsFor(graceSecondsFor(config.lifecycle, 900)), now: () => clock.now },
    ),
    resolve: createRuleResolver(config.rules),
    mirrorName: createMirrorNames(config.rules, config.defaultRule),
    upstreamFor: (rule) => {
      if (!clients.has(rule.prefix)) clients.set(rule.prefix, createUpstreamClient(rule, metrics ? { observer: { metrics, log: silentLog } } : {}));
      return clients.get(rule.prefix)!;
    },
    maxManifestBytes: config.maxManifestBytes,
    fill: config.blobFill,
    log: silentLog,
    metrics,
    now: () => clock.now,
    lifecycle: { touchIntervalSeconds: config.lifecycle.touchIntervalSeconds },
    onTagMoved: (change) => {
      changes.push(change);
    },
    ...(extra.dispatchFill
      ? {
          dispatchFill: async (job: FillJob) => {
            if (dispatchFailures > 0) {
              dispatchFailures--;
              throw Object.assign(new Error('Rate Exceeded.'), { name: 'TooManyRequestsException' });
            }
            fillJobs.push(job);
            setTimeout(() => void fillFunction?.(job).catch(() => undefined), extra.dispatchFill!.delayMs);
          },
        }
      : {}),
  };
  const auth = await buildClientAuth({
    env: { dataDir: dir, requireAuth: false, inLambda: false },
    config,
    names: { prefixes: config.rules.map((r) => r.prefix), mirrorName: deps.mirrorName, resolve: deps.resolve },
    log: silentLog,
    now: () => clock.now,
  });
  const { app, manifests, blobs: blobService } = createRegistry(deps, { auth, accounting });
  // As functions/fill.ts: a `prove` job runs the proof by the bytes, any other a fill.
  fillFunction = (job) => (job.mode === 'prove' ? blobService.prove(job.name, job.digest, job.leaseOwner) : blobService.fill(job.name, job.digest, job.leaseOwner));
  const refresher = createRefresher(deps, manifests, config.refresh);
  // The fs store's signed URLs live 900 s (its default): the grace period must be at least twice that.
  const lifecycle = createLifecycle(deps, config, graceSecondsFor(config.lifecycle, 900));

  async function request(
    method: string,
    pathWithQuery: string,
    headers: Record<string, string> = {},
    opts: { body?: string; sourceIp?: string } = {},
  ): Promise<RegistryResponse> {
    const [path, query = ''] = pathWithQuery.split('?');
    const body = opts.body === undefined ? undefined : Buffer.from(opts.body);
    return app({ method, path, query: new URLSearchParams(query), headers, ...(body ? { body } : {}), ...(opts.sourceIp ? { sourceIp: opts.sourceIp } : {}) });
  }

  /** Follows a blob 307 to the signed local URL and reads the bytes from the store. */
  function readLocation(location: string): Buffer {
    const [path, query] = location.split('?');
    const digest = blobs.verifyUrl(path, new URLSearchParams(query));
    if (!digest) throw new Error(`bad signed URL ${location}`);
    // As the local server's blob route: the committed file, else the copy a GC unpublished into trash/.
    try {
      return readFileSync(blobs.pathOf(digest));
    } catch {
      return readFileSync(blobs.trashPathOf(digest));
    }
  }

  return {
    app, refresher, lifecycle, deps, manifests, changes, fillJobs, index, blobs, blobService, clock, dir, dbPath, request, readLocation, storeCalls,
    bodyOf: (res: RegistryResponse) => (res.body === undefined ? undefined : Buffer.from(res.body as Uint8Array)),
    jsonOf: (res: RegistryResponse) => JSON.parse(Buffer.from(res.body as Uint8Array).toString('utf8')),
    close() {
      index.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
