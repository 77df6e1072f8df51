/**
 * Re-checking a cached tag against its upstream (a stale pull, and the scheduled refresh through manifests.ts): one
 * HEAD, a GET only when the digest moved (or the upstream gives none), the outcome recorded on the tag, the rule's
 * `onUpstreamDelete` applied, a move announced (`onTagMoved`). Upstream failures are outcomes, never thrown: the
 * cached manifest keeps being served.
 */
import { isDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { LastCheck, ManifestRecord, TagRecord } from '../store/ports.js';
import { UpstreamError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import { dueAtFor } from './freshness.js';
import type { ManifestFetcher } from './manifest-fetch.js';
import type { ResolvedName } from './rules.js';
import type { SignatureCheck } from './signature-check.js';

/** Milliseconds after a failed re-check before the scheduled refresh tries the tag again (15 min). */
export const RETRY_AFTER_ERROR_MS = 15 * 60 * 1000;

/** What one re-check of a cached tag found. */
export interface TagCheck {
  result: LastCheck['result'];
  record?: ManifestRecord;
  oldDigest: Digest;
  newDigest?: Digest;
  error?: UpstreamError;
}

/**
 * The index entry pointing `tag` at `record`, fetched and checked at `now` (ms). `pulledAt`: now for a tag a client
 * pulled (a fill), the entry's own for a tag the refresh re-checked.
 */
export function tagRecord(resolved: ResolvedName, tag: string, record: ManifestRecord, now: number, lastCheck?: LastCheck, pulledAt = now): TagRecord {
  const dueAt = dueAtFor(resolved.rule, tag, now);
  return {
    name: resolved.name, tag, digest: record.digest, mediaType: record.mediaType, size: record.size, fetchedAt: now, checkedAt: now,
    ...(dueAt === undefined ? {} : { dueAt }),
    ...(lastCheck ? { lastCheck } : {}),
    pulledAt,
  };
}

/**
 * The re-check of one cached tag, counted per outcome (`deps.metrics.tagCheck`); `timeoutMs` bounds the HEAD.
 * Throws only what is not an upstream failure (a store error).
 */
export function createTagChecker(
  deps: RegistryDeps,
  fetcher: Pick<ManifestFetcher, 'fetchAndStore'>,
  signatures: SignatureCheck,
): (entry: TagRecord, opts?: { timeoutMs?: number }) => Promise<TagCheck> {
  const { stores, log } = deps;

  async function announceMove(resolved: ResolvedName, tag: string, oldDigest: Digest, newDigest: Digest): Promise<void> {
    const change = { rule: resolved.rule.prefix, name: resolved.name, tag, oldDigest, newDigest };
    log.info('tag moved upstream', { event: 'tag-moved', ...change });
    try {
      await deps.onTagMoved?.(change);
    } catch (err) {
      log.warn('could not publish a tag change', { ...change, reason: (err as Error).message });
    }
  }

  async function checkTagOnce(entry: TagRecord, opts: { timeoutMs?: number }): Promise<TagCheck> {
    const resolved = deps.resolve(entry.name);
    const { tag, digest: current } = entry;
    const record = async (result: LastCheck['result'], error?: string) => {
      const now = deps.now();
      // After a failed check the schedule tries again sooner (at most RETRY_AFTER_ERROR_MS), not a whole TTL later.
      const due = dueAtFor(resolved.rule, tag, now);
      const dueAt = result === 'error' && due !== undefined ? Math.min(due, now + RETRY_AFTER_ERROR_MS) : due;
      await stores.tags.recordCheck(resolved.name, tag, { checkedAt: now, dueAt, lastCheck: { at: now, result, ...(error ? { error } : {}) } });
    };
    try {
      const head = await deps.upstreamFor(resolved.rule).headManifest(resolved.upstreamRepository, tag, opts);
      const moved = head.digest && isDigest(head.digest) ? head.digest : undefined;
      if (moved === current) {
        const cached = await stores.manifests.getManifest(resolved.name, current);
        if (cached) {
          await record('unchanged');
          return { result: 'unchanged', record: cached, oldDigest: current, newDigest: current };
        }
      }
      // Moved, or no Docker-Content-Digest on the HEAD (then GET and hash). A manifest already stored must pass the
      // signature policy, and is touched, before the tag points at it: a garbage collection deciding to delete it
      // either sees the new time and keeps it, or deleted it before, and then it is fetched again (pulls.ts;
      // lifecycle/gc.ts).
      const stored = moved ? await stores.manifests.getManifest(resolved.name, moved) : undefined;
      const admitted = stored && (await signatures.admitStored(resolved, stored));
      const kept = admitted && (await stores.manifests.recordManifestPull(resolved.name, admitted.digest, deps.now())) ? admitted : undefined;
      const fresh = kept ?? (await fetcher.fetchAndStore(resolved, moved ?? tag, moved));
      const now = deps.now();
      const result = fresh.digest === current ? 'unchanged' : 'moved';
      await stores.tags.putTag(tagRecord(resolved, tag, fresh, now, { at: now, result }, entry.pulledAt ?? entry.fetchedAt));
      if (result === 'moved') await announceMove(resolved, tag, current, fresh.digest);
      return { result, record: fresh, oldDigest: current, newDigest: fresh.digest };
    } catch (caught) {
      if (caught instanceof RegistryError && caught.code === 'DENIED') {
        // The tag moved to a manifest the signature policy refuses: the verified one it pointed at stays served.
        log.warn('tag moved upstream to a manifest the signature policy refuses: still serving the previous one', {
          event: 'tag-move-refused', rule: resolved.rule.prefix, name: resolved.name, tag, digest: current, reason: caught.message,
        });
      }
      // A moved manifest the upstream serves wrong (digest mismatch, not a manifest) is an upstream fault too:
      // recorded, and the cached manifest keeps being served.
      const err = caught instanceof RegistryError ? new UpstreamError('unavailable', caught.message) : caught;
      if (!(err instanceof UpstreamError)) throw err;
      if (err.failure === 'not-found') {
        if (resolved.rule.onUpstreamDelete === 'stop') {
          await stores.tags.deleteTag(resolved.name, tag);
          log.info('tag deleted upstream: removed from the cache', { event: 'tag-gone', rule: resolved.rule.prefix, name: resolved.name, tag, digest: current });
        } else {
          await record('gone', 'upstream answered 404');
          log.info('tag deleted upstream: still served from the cache', { event: 'tag-gone', rule: resolved.rule.prefix, name: resolved.name, tag, digest: current });
        }
        return { result: 'gone', oldDigest: current, error: err };
      }
      await record('error', err.message.slice(0, 200));
      return { result: 'error', oldDigest: current, error: err };
    }
  }

  return async (entry, opts = {}) => {
    const check = await checkTagOnce(entry, opts);
    deps.metrics?.tagCheck({ rule: deps.resolve(entry.name).rule.prefix, result: check.result });
    return check;
  };
}
