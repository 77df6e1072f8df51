/**
 * What the registry services are built from: storage ports, the rule resolver, one upstream client per rule,
 * a logger and a clock. Built once per process by the composition root (`shared/runtime.ts`).
 */
import type { PullThroughCacheRule } from '../config.js';
import type { Log } from '../observe/log.js';
import type { Metrics } from '../observe/metrics.js';
import type { Stores } from '../store/ports.js';
import type { UpstreamClient } from '../upstream/client.js';
import type { ResolvedName } from './rules.js';

export type { Log } from '../observe/log.js';

/** A blob fill to run: the cache-side name (its rule gives the upstream) and the digest. */
export interface FillJob {
  name: string;
  digest: string;
  /** Owner of the fill lease the dispatcher took; the filler releases it when done. */
  leaseOwner: string;
  /**
   * `prove`: not a fill but a proof by the bytes (blob-prove.ts): hash the name's upstream copy of a blob stored
   * (or being filled) for another name, and link it to the name when it matches; `leaseOwner` holds the proof's
   * lease. Absent: a fill.
   */
  mode?: 'prove';
}

/** Settings of the blob miss path (see `blobFill` in config.ts). Seconds, and bytes per second. */
export interface FillSettings {
  waitSeconds: number;
  maxHops: number;
  leaseSeconds: number;
  staleLeaseSeconds: number;
  minBytesPerSecond: number;
  deadlineGraceSeconds: number;
}

/** A tag the upstream moved, as found by a re-check (pull-time or scheduled). */
export interface TagChange {
  rule: string;
  name: string;
  tag: string;
  oldDigest: string;
  newDigest: string;
}

/** Dependencies of the registry services. `now` returns milliseconds since the epoch. */
export interface RegistryDeps {
  stores: Stores;
  resolve(name: string): ResolvedName;
  /** Maps a mirror-style name (no prefix; `ns` = upstream host) to a prefixed name; identity otherwise. */
  mirrorName(name: string, ns?: string): string;
  upstreamFor(rule: PullThroughCacheRule): UpstreamClient;
  maxManifestBytes: number;
  fill: FillSettings;
  /**
   * Starts a fill elsewhere (AWS: async invocation of the fill function, which holds the lease and releases it).
   * Absent: fills run in this process, in the background of the request that took the lease.
   */
  dispatchFill?: (job: FillJob) => Promise<void>;
  log: Log;
  /** Where the core counts what it does (shared/observe/metrics.ts); absent: nowhere. */
  metrics?: Metrics;
  now(): number;
  /** Told about every tag move (metrics, EventBridge); the structured log line is written regardless. */
  onTagMoved?: (change: TagChange) => Promise<void> | void;
  /** Lifecycle settings the request path needs (config `lifecycle`); absent: the defaults. */
  lifecycle?: { touchIntervalSeconds: number };
}
