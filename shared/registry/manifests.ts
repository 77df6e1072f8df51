/**
 * Manifests through the cache (distribution's proxy layering): digests local-first and immutable; tags
 * answered from the index while fresh under the rule's policy (`freshness.ts`), re-checked with one upstream
 * HEAD when stale (refetched only when the digest moved; tag-check.ts), and served stale when the upstream cannot
 * answer in time: `revalidateTimeoutSeconds` bounds the whole re-check a pull waits for (HEAD and the GET of a moved
 * manifest). A GET still running then is not abandoned: it finishes in the background (bounded by the rule's
 * `upstreamTimeoutSeconds`) and moves the tag once the new manifest is verified and stored, so the next pull gets
 * it. (On Lambda the background work may be frozen with the invocation; the scheduled refresh catches up.) Misses
 * are fetched, verified and stored by manifest-fetch.ts, which also remembers "does not exist" answers briefly
 * and refuses a manifest over `maxManifestBytes` (502 `MANIFEST_INVALID`).
 */
import type { Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { noteCache } from '../observe/request-scope.js';
import { parseReference } from '../oci/reference.js';
import type { LastCheck, ManifestRecord, TagRecord } from '../store/ports.js';
import { toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import { isFresh } from './freshness.js';
import { createManifestFetcher } from './manifest-fetch.js';
import { createPullRecorder } from './pulls.js';
import type { ResolvedName } from './rules.js';
import { createSignatureCheck } from './signature-check.js';
import { createSingleFlight } from './single-flight.js';
import { createTagChecker, tagRecord, type TagCheck } from './tag-check.js';

export { RETRY_AFTER_ERROR_MS, type TagCheck } from './tag-check.js';

/** `p`'s value if it settles within `ms` (its rejection too), else undefined; `p` itself runs on. */
async function withinMs<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const expired = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), ms);
    });
    return await Promise.race([p, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Manifest operations of the cache. */
export interface ManifestService {
  /**
   * The manifest for `reference` (tag or digest) in `name`, fetching and storing it on a miss.
   * @throws RegistryError `NAME_INVALID`/`NAME_UNKNOWN`/`DIGEST_INVALID` for bad input, `MANIFEST_UNKNOWN` for a
   *   reference that is not a valid tag (before any upstream request) or when the upstream does not have it, `TOOMANYREQUESTS`/`UNAVAILABLE` when the upstream
   *   cannot answer and nothing is cached.
   */
  get(name: string, reference: string): Promise<ManifestRecord>;
  /**
   * Re-checks a cached tag against the upstream with one HEAD (a GET only when the digest moved, or when the
   * upstream gives no digest), records the outcome on the tag, and applies the rule's `onUpstreamDelete`.
   * Upstream failures are returned as `result: 'error'` (never thrown); `timeoutMs` bounds the HEAD.
   */
  checkTag(entry: TagRecord, opts?: { timeoutMs?: number }): Promise<TagCheck>;
}

/** Creates the manifest service. */
export function createManifestService(deps: RegistryDeps): ManifestService {
  const { stores, log } = deps;
  const flights = createSingleFlight();
  const pulls = createPullRecorder(deps);
  const signatures = createSignatureCheck(deps);
  const { fetchAndStore, rememberingMisses } = createManifestFetcher(deps, signatures);
  const checkTag = createTagChecker(deps, { fetchAndStore }, signatures);

  async function byDigest(resolved: ResolvedName, digest: Digest): Promise<ManifestRecord> {
    const cached = await stores.manifests.getManifest(resolved.name, digest);
    noteCache(cached ? 'hit' : 'miss');
    if (cached) {
      await pulls.manifestPulled(cached);
      return cached;
    }
    try {
      return await rememberingMisses(resolved, digest, () => flights.run(`${resolved.name}@${digest}`, () => fetchAndStore(resolved, digest, digest)));
    } catch (err) {
      throw toRegistryError(err, 'MANIFEST_UNKNOWN');
    }
  }

  /** Fetches a tag and points the index at what came back. */
  async function fillTag(resolved: ResolvedName, tag: string, lastCheck?: Omit<LastCheck, 'at'>): Promise<ManifestRecord> {
    return flights.run(`${resolved.name}:${tag}`, async () => {
      // A request that missed the index just before another request's fill committed must not fetch again.
      const entry = lastCheck ? undefined : await stores.tags.getTag(resolved.name, tag);
      const committed = entry && isFresh(resolved.rule, tag, entry.checkedAt, deps.now()) && (await stores.manifests.getManifest(resolved.name, entry.digest));
      if (committed) return committed;
      const record = await fetchAndStore(resolved, tag);
      const now = deps.now();
      await stores.tags.putTag(tagRecord(resolved, tag, record, now, lastCheck && { ...lastCheck, at: now }));
      return record;
    });
  }

  async function byTag(resolved: ResolvedName, tag: string): Promise<ManifestRecord> {
    const entry = await stores.tags.getTag(resolved.name, tag);
    const cached = entry && (await stores.manifests.getManifest(resolved.name, entry.digest));
    if (entry && cached) {
      await pulls.tagPulled(entry);
      if (isFresh(resolved.rule, tag, entry.checkedAt, deps.now())) {
        noteCache('hit');
        return cached;
      }
      const timeoutMs = resolved.rule.revalidateTimeoutSeconds * 1000;
      const running = flights.run(`${resolved.name}:${tag}?check`, () => checkTag(entry, { timeoutMs }));
      const check = await withinMs(running, timeoutMs);
      if (check === undefined) {
        // The HEAD answered but the moved manifest is still arriving: serve the cached one now; the check goes on
        // in the background (its GET bounded by upstreamTimeoutSeconds) and moves the tag once verified.
        running.catch((err: unknown) => log.warn('background re-check failed', { name: resolved.name, tag, reason: (err as Error).message }));
        log.warn('serving stale tag', { name: resolved.name, tag, digest: entry.digest, reason: `re-check still running after ${timeoutMs} ms` });
        noteCache('stale');
        return cached;
      }
      if (check.record) {
        noteCache(check.result === 'moved' ? 'refreshed' : 'revalidated');
        return check.record;
      }
      if (check.result === 'gone' && resolved.rule.onUpstreamDelete === 'stop') throw new RegistryError('MANIFEST_UNKNOWN');
      // Upstream down, slow, rate-limited, or the tag gone upstream (policy keep): never worse than stale.
      log.warn('serving stale tag', { name: resolved.name, tag, digest: entry.digest, reason: check.error?.message });
      noteCache('stale');
      return cached;
    }
    noteCache('miss');
    try {
      return await rememberingMisses(resolved, `tag:${tag}`, () => fillTag(resolved, tag));
    } catch (err) {
      throw toRegistryError(err, 'MANIFEST_UNKNOWN');
    }
  }

  return {
    async get(name, reference) {
      const resolved = deps.resolve(name);
      const ref = parseReference(reference);
      const record = ref.kind === 'digest' ? await byDigest(resolved, ref.digest) : await byTag(resolved, ref.tag);
      try {
        return await signatures.admitStored(resolved, record);
      } catch (err) {
        throw toRegistryError(err, 'MANIFEST_UNKNOWN');
      }
    },
    checkTag,
  };
}
