/**
 * Manifests through the cache (distribution's proxy layering): digests local-first and immutable; tags
 * answered from the index while fresh under the rule's policy (`freshness.ts`), re-checked with one upstream
 * HEAD when stale (refetched only when the digest moved), and served stale when the upstream cannot answer in
 * time: `revalidateTimeoutSeconds` bounds the whole re-check a pull waits for (HEAD and the GET of a moved
 * manifest). A GET still running then is not abandoned: it finishes in the background (bounded by the rule's
 * `upstreamTimeoutSeconds`) and moves the tag once the new manifest is verified and stored, so the next pull gets
 * it. (On Lambda the background work may be frozen with the invocation; the scheduled refresh catches up.) "Does not exist" answers are remembered briefly (negative cache) so repeated misses skip the upstream.
 * A manifest over `maxManifestBytes` is refused for good (502 `MANIFEST_INVALID` naming the limit, not a 503
 * inviting retries), and the refusal is remembered like a miss.
 */
import { digestLike, isDigest, sha256Digest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { noteCache } from '../observe/request-scope.js';
import { classifyManifest, referencedBlobs } from '../oci/media-types.js';
import { parseReference } from '../oci/reference.js';
import type { LastCheck, ManifestRecord, TagRecord } from '../store/ports.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import { createNegativeCache } from './negative-cache.js';
import { dueAtFor, isFresh } from './freshness.js';
import { createPullRecorder } from './pulls.js';
import type { ResolvedName } from './rules.js';
import { createSignatureCheck } from './signature-check.js';
import { createSingleFlight } from './single-flight.js';

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
  /** Remembered answers: the upstream does not have it, or its manifest is over `maxManifestBytes`. */
  const missing = createNegativeCache<'unknown' | 'too-large'>(() => deps.now());
  const tooLarge = (cause?: unknown) =>
    new RegistryError('MANIFEST_INVALID', `manifest larger than maxManifestBytes (${deps.maxManifestBytes} bytes)`, { status: 502, cause });
  const pulls = createPullRecorder(deps);
  const signatures = createSignatureCheck(deps);

  /**
   * Fetches `reference` upstream, verifies its digest and that it is a manifest (`classifyManifest`), judges it
   * under the rule's signature policy (signature-check.ts), stores it with the verdict (and links its blobs);
   * nothing is stored on failure or refusal.
   */
  async function fetchAndStore(resolved: ResolvedName, reference: string, expected?: Digest): Promise<ManifestRecord> {
    const upstream = deps.upstreamFor(resolved.rule);
    const fetched = await upstream.getManifest(resolved.upstreamRepository, reference, deps.maxManifestBytes);
    const digest = expected ? digestLike(expected, fetched.body) : sha256Digest(fetched.body);
    const advertised = fetched.digestHeader && isDigest(fetched.digestHeader) ? fetched.digestHeader : undefined;
    if ((expected && digest !== expected) || (advertised && advertised.startsWith('sha256:') && digest.startsWith('sha256:') && advertised !== digest)) {
      log.warn('upstream manifest did not match its digest', { name: resolved.name, reference, expected: expected ?? advertised, actual: digest });
      throw new RegistryError('DIGEST_INVALID', 'upstream manifest did not match its digest', { status: 502 });
    }
    // The right bytes, but are they a manifest (not a login page), of the type they were served as?
    const mediaType = classifyManifest(fetched.contentType, fetched.body);
    const record: ManifestRecord = { name: resolved.name, digest, mediaType, size: fetched.body.length, body: fetched.body, pulledAt: deps.now() };
    const verification = await signatures.judgeNew(resolved, record);
    if (verification) record.verification = verification;
    await stores.manifests.putManifest(record, referencedBlobs(mediaType, fetched.body), resolved.rule.prefix);
    await signatures.stored(resolved, record);
    return record;
  }

  /** Runs `fn`, remembering an upstream "not found" and a manifest too large for the rule's negative-cache time. */
  async function rememberingMisses<T>(resolved: ResolvedName, key: string, fn: () => Promise<T>): Promise<T> {
    const k = `${resolved.name}\n${key}`;
    const known = missing.get(k);
    if (known) throw known === 'too-large' ? tooLarge() : new RegistryError('MANIFEST_UNKNOWN');
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err;
      const ttlMs = resolved.rule.negativeCacheSeconds * 1000;
      if (err.failure === 'not-found' || err.failure === 'denied') missing.remember(k, ttlMs, 'unknown');
      if (err.failure !== 'too-large') throw err;
      missing.remember(k, ttlMs, 'too-large');
      throw tooLarge(err);
    }
  }

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

  /** `pulledAt`: now for a tag a client pulled (a fill), the entry's own for a tag the refresh re-checked. */
  function tagRecord(resolved: ResolvedName, tag: string, record: ManifestRecord, now: number, lastCheck?: LastCheck, pulledAt = now): TagRecord {
    const dueAt = dueAtFor(resolved.rule, tag, now);
    return {
      name: resolved.name, tag, digest: record.digest, mediaType: record.mediaType, size: record.size, fetchedAt: now, checkedAt: now,
      ...(dueAt === undefined ? {} : { dueAt }),
      ...(lastCheck ? { lastCheck } : {}),
      pulledAt,
    };
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

  async function announceMove(resolved: ResolvedName, tag: string, oldDigest: Digest, newDigest: Digest): Promise<void> {
    const change = { rule: resolved.rule.prefix, name: resolved.name, tag, oldDigest, newDigest };
    log.info('tag moved upstream', { event: 'tag-moved', ...change });
    try {
      await deps.onTagMoved?.(change);
    } catch (err) {
      log.warn('could not publish a tag change', { ...change, reason: (err as Error).message });
    }
  }

  /** Counts each re-check's outcome (`deps.metrics.tagCheck`). */
  async function checkTag(entry: TagRecord, opts: { timeoutMs?: number } = {}): Promise<TagCheck> {
    const check = await checkTagOnce(entry, opts);
    deps.metrics?.tagCheck({ rule: deps.resolve(entry.name).rule.prefix, result: check.result });
    return check;
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
      const fresh = kept ?? (await fetchAndStore(resolved, moved ?? tag, moved));
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
