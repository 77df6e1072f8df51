/**
 * Last-pulled times (the lifecycle evicts by them): every manifest served by tag records the pull on the tag,
 * every manifest served by digest on the manifest. A write happens only when the stored time is at least
 * `touchIntervalSeconds` old, so a warm pull of a hot image costs no write within the interval (at most one
 * write per item per interval per process; an in-process memo also covers records a cache answered from memory).
 * A freshly stored tag or manifest already carries the time of its store. A failed write is logged and never
 * fails the pull.
 */
import { LRUCache } from 'lru-cache';
import type { ManifestRecord, TagRecord } from '../store/ports.js';
import type { RegistryDeps } from './deps.js';

/** Default seconds between two last-pulled writes of one item (config `lifecycle.touchIntervalSeconds`). */
export const DEFAULT_TOUCH_INTERVAL_SECONDS = 3600;

/** Records pulls (see the file header). */
export interface PullRecorder {
  /** A client pulled the manifest `entry` points at, by this tag. */
  tagPulled(entry: TagRecord): Promise<void>;
  /** A client pulled `record` by its digest. */
  manifestPulled(record: ManifestRecord): Promise<void>;
}

/** Creates the recorder; `touchIntervalSeconds` from `deps.lifecycle` (default one hour). */
export function createPullRecorder(deps: Pick<RegistryDeps, 'stores' | 'now' | 'log' | 'lifecycle'>): PullRecorder {
  const intervalMs = (deps.lifecycle?.touchIntervalSeconds ?? DEFAULT_TOUCH_INTERVAL_SECONDS) * 1000;
  const written = new LRUCache<string, number>({ max: 10_000 });

  async function touch(key: string, storedAt: number, write: (at: number) => Promise<unknown>): Promise<void> {
    const now = deps.now();
    if (now - Math.max(storedAt, written.get(key) ?? 0) < intervalMs) return;
    written.set(key, now);
    try {
      await write(now);
    } catch (err) {
      written.delete(key);
      deps.log.warn('could not record a pull', { key, reason: (err as Error).message });
    }
  }

  return {
    tagPulled: (entry) =>
      touch(`${entry.name}:${entry.tag}`, entry.pulledAt ?? entry.fetchedAt, (at) => deps.stores.tags.recordTagPull(entry.name, entry.tag, at)),
    manifestPulled: (record) =>
      touch(`${record.name}@${record.digest}`, record.pulledAt ?? 0, (at) => deps.stores.manifests.recordManifestPull(record.name, record.digest, at)),
  };
}
