/**
 * Running blob fills in this process: upstream GET → verified store write → link to the repository whose upstream
 * served it. Each fill is watched (fill-lease.ts): it heartbeats its lease while it makes progress, and it is
 * abandoned — upstream connection destroyed, temp file removed, lease released — when it passes its deadline or
 * its lease was taken over.
 *
 * Storage exhaustion while writing (disk full, quota; shared/store/storage-full.ts) ends a fill with a retryable
 * 503 and an ERROR line `event: "storage-full"`, and the digest backs off: for 10 s, doubling with each further
 * failure up to 5 min, fills of it answer 503 at once instead of downloading it from the upstream again.
 *
 * A store that can tell its free space (`BlobStore.hasRoomFor`) is asked before the first byte when the upstream
 * announced the size, so such a fill fails before any client was handed the blob's location. That size is only
 * the upstream's claim, not verified bytes: any rule's upstream may announce 900 TB for any digest. So a refusal
 * there is that name's problem, not the store's: 503 with a WARN line `event: "fill-no-room"`, and the same
 * backoff keyed by name and digest, so other names (another rule's honest upstream) still fill the digest.
 */
import type { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import type { Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { isStorageFull, storageFullError } from '../store/storage-full.js';
import { isUpstreamUnknown, UpstreamError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import { fillLeaseKey, startFillWatchdog, type FillProgress } from './fill-lease.js';
import type { ResolvedName } from './rules.js';

/** Backoff of a digest whose fill ran out of storage: first window, longest window (ms). */
const STORAGE_BACKOFF = { firstMs: 10_000, maxMs: 300_000 } as const;

/** A backoff: failures so far and until when (ms) fills answer 503 at once. */
interface Backoff {
  failures: number;
  until: number;
}

/** The upstream announced a size the store has no room for (before the first byte; see the file header). */
class NoRoomForAnnounced extends Error {
  constructor(readonly size: number) {
    super(`no room for a blob of ${size} bytes (the size the upstream announced)`);
  }
}

/** The answer while a name's upstream announces a size the store has no room for: 503, `Retry-After` seconds. */
function noRoomError(retryAfterSeconds: number, cause?: unknown): RegistryError {
  return new RegistryError('UNAVAILABLE', 'the cache has no room for a blob of the size the upstream announced; retry later', {
    headers: { 'Retry-After': String(Math.max(1, Math.ceil(retryAfterSeconds))) },
    cause,
  });
}

/** A fill running in this process. Sizes in bytes. */
export interface RunningFill {
  /** The cache-side name the fill was started for: its upstream's 2xx confirms the digest for this name only. */
  name: string;
  /** Resolves with the committed size; rejects when the fill fails. */
  done: Promise<number>;
  /**
   * Resolves (with the announced size, if any) once the upstream answered 2xx and the store started writing;
   * rejects only when the fill fails before that.
   */
  streaming: Promise<number | undefined>;
  /** The size (bytes) the upstream announced, once it answered (set when `streaming` resolves); the store commits nothing of another size. */
  announcedSize?: number;
  /**
   * The digest was proved to be `size` bytes by `name`'s upstream's bytes (hashed to it in this process): a fill
   * whose upstream announced another size, or sent more, can never commit. Such a fill is abandoned (as at its
   * deadline: upstream connection, temp file and lease released; `done` and a pending `streaming` reject) now, or
   * as soon as its upstream announces another size or sends byte `size` + 1. True when it was abandoned now.
   */
  holdTo(size: number, name: string): boolean;
  /** The size {@link RunningFill.holdTo} holds this fill to, once a proof gave one. Bytes. */
  readonly heldTo?: number;
}

/** What {@link Filler.run}'s caller watches and controls of a fill. */
export interface FillWatch {
  signal: AbortSignal;
  onBytes?(bytes: number): void;
}

/** Fills in this process (see the file header). */
export interface Filler {
  /** The fill of `digest` running in this process, if any. */
  running(digest: Digest): RunningFill | undefined;
  /** How many fills run in this process now (those {@link Filler.start} started). */
  count(): number;
  /** Starts a fill in the background under the lease `owner` took; the lease is released when it ends. */
  start(resolved: ResolvedName, digest: Digest, owner: string): RunningFill;
  /**
   * Runs one fill to its end and returns the size; `owner`'s lease (when given) is heartbeated, not released.
   * `watch.signal` abandons it (its reason logged); `watch.onBytes` gets the bytes received so far, per chunk.
   * @throws UpstreamError from the upstream; RegistryError `DIGEST_INVALID`/`SIZE_INVALID` for wrong bytes,
   *   `UNAVAILABLE` for exhausted storage (and while the digest backs off after that).
   */
  run(resolved: ResolvedName, digest: Digest, owner?: string, onWriting?: (size?: number) => void, watch?: FillWatch): Promise<number>;
}

/** Creates the filler of one blob service. */
export function createFiller(deps: RegistryDeps): Filler {
  const { stores, log } = deps;
  const inflight = new Map<Digest, RunningFill>();
  // Digests whose fill ran out of storage while writing (every name), and `<name> <digest>` pairs whose upstream
  // announced a size the store has no room for (that name only).
  const backoff = new LRUCache<Digest, Backoff>({ max: 10_000, ttl: 2 * STORAGE_BACKOFF.maxMs });
  const noRoomBackoff = new LRUCache<string, Backoff>({ max: 10_000, ttl: 2 * STORAGE_BACKOFF.maxMs });
  const noRoomKey = (resolved: ResolvedName, digest: Digest) => `${resolved.name} ${digest}`;

  function refuseWhileBackingOff(resolved: ResolvedName, digest: Digest): void {
    const full = backoff.get(digest);
    if (full && full.until > Date.now()) throw storageFullError((full.until - Date.now()) / 1000);
    const noRoom = noRoomBackoff.get(noRoomKey(resolved, digest));
    if (noRoom && noRoom.until > Date.now()) throw noRoomError((noRoom.until - Date.now()) / 1000);
  }

  /** One more failure of `key` in `cache`: the new window (10 s, doubling up to 5 min) and the failures so far. */
  function backOff<K extends string>(cache: LRUCache<K, Backoff>, key: K): Backoff & { windowMs: number } {
    const failures = (cache.get(key)?.failures ?? 0) + 1;
    const windowMs = Math.min(STORAGE_BACKOFF.firstMs * 2 ** (failures - 1), STORAGE_BACKOFF.maxMs);
    cache.set(key, { failures, until: Date.now() + windowMs });
    return { failures, until: Date.now() + windowMs, windowMs };
  }

  function onStorageFull(resolved: ResolvedName, digest: Digest, err: unknown): RegistryError {
    const { failures, windowMs } = backOff(backoff, digest);
    log.error('blob fill ran out of storage', {
      event: 'storage-full', name: resolved.name, digest, failures, backoffSeconds: windowMs / 1000, reason: (err as Error).message,
    });
    return storageFullError(windowMs / 1000, err);
  }

  function onNoRoom(resolved: ResolvedName, digest: Digest, err: NoRoomForAnnounced): RegistryError {
    const { failures, windowMs } = backOff(noRoomBackoff, noRoomKey(resolved, digest));
    log.warn('blob fill refused: no room for the size the upstream announced', {
      event: 'fill-no-room', name: resolved.name, digest, announcedBytes: err.size, failures, backoffSeconds: windowMs / 1000,
    });
    return noRoomError(windowMs / 1000, err);
  }

  async function run(resolved: ResolvedName, digest: Digest, owner?: string, onWriting?: (size?: number) => void, watch?: FillWatch): Promise<number> {
    refuseWhileBackingOff(resolved, digest);
    const progress: FillProgress = { phase: 'connecting', bytes: 0, startedAt: Date.now() };
    let stream: Readable | undefined;
    let abandoned: string | undefined;
    const abandon = (reason: string) => {
      if (abandoned !== undefined) return;
      abandoned = reason;
      log.warn('blob fill abandoned', { event: 'fill-abandoned', name: resolved.name, digest, reason });
      stream?.destroy(new UpstreamError('unavailable', `blob fill abandoned: ${reason}`));
    };
    const stopWatchdog = startFillWatchdog({ stores, digest, owner, settings: deps.fill, progress: () => progress, log, abandon });
    const signal = watch?.signal;
    const onAbort = () => abandon(String(signal!.reason));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const blob = await deps.upstreamFor(resolved.rule).getBlob(resolved.upstreamRepository, digest);
      stream = blob.stream;
      // Errors reach the store's pipeline; this keeps one raised before the pipeline exists (abandoned while the
      // room is checked) from being unhandled.
      stream.on('error', () => undefined);
      if (abandoned) {
        stream.destroy();
        throw new UpstreamError('unavailable', `blob fill abandoned: ${abandoned}`);
      }
      const size = blob.size !== undefined && Number.isSafeInteger(blob.size) ? blob.size : undefined;
      progress.phase = 'transferring';
      progress.size = size;
      // Counted alongside the store's own consumer (the source is already flowing: see fs-blob-store.ts).
      stream.on('data', (chunk: Buffer) => {
        progress.bytes += chunk.length;
        watch?.onBytes?.(progress.bytes);
      });
      if (size !== undefined && stores.blobs.hasRoomFor) {
        stream.pause(); // the store's pipeline resumes it
        if (!(await stores.blobs.hasRoomFor(size))) {
          stream.destroy();
          throw new NoRoomForAnnounced(size);
        }
      }
      const writing = stores.blobs.write(digest, stream, blob.size);
      onWriting?.(size);
      const written = await writing;
      progress.phase = 'committing';
      backoff.delete(digest);
      noRoomBackoff.delete(noRoomKey(resolved, digest));
      await stores.links.link(resolved.name, digest);
      log.info('blob filled', { name: resolved.name, digest, size: written.size, ms: Date.now() - progress.startedAt });
      deps.metrics?.fill({ rule: resolved.rule.prefix, seconds: (Date.now() - progress.startedAt) / 1000, ok: true });
      return written.size;
    } catch (err) {
      if (isUpstreamUnknown(err)) {
        // No failed fill: the upstream does not have the blob (a typo'd digest, a scanner): 404 BLOB_UNKNOWN.
        // `fill_failures` (and the AWS `FillFailures` alarm) count fills of a blob the upstream has that did not
        // complete: unreachable, too slow, wrong bytes, storage full.
        log.info('blob not found upstream', { event: 'fill-not-found', name: resolved.name, digest, status: err.status, reason: err.message });
        throw err;
      }
      deps.metrics?.fill({ rule: resolved.rule.prefix, seconds: (Date.now() - progress.startedAt) / 1000, ok: false });
      if (err instanceof NoRoomForAnnounced) throw onNoRoom(resolved, digest, err);
      if (isStorageFull(err)) throw onStorageFull(resolved, digest, err);
      // An abandoned fill was logged when it was abandoned.
      if (!abandoned) log.warn('blob fill failed', { event: 'fill-failed', name: resolved.name, digest, reason: (err as Error).message });
      if (err instanceof RegistryError || err instanceof UpstreamError) throw err;
      // The body broke mid-transfer (connection reset, truncation): nothing was committed.
      throw new UpstreamError('unavailable', `blob transfer failed: ${(err as Error).message}`);
    } finally {
      stopWatchdog();
      signal?.removeEventListener('abort', onAbort);
    }
  }

  function start(resolved: ResolvedName, digest: Digest, owner: string): RunningFill {
    const announced: { size?: number } = {};
    // The size another name's proof showed the digest to have (holdTo), the bytes received so far, and the verdict.
    let proven: { size: number; name: string } | undefined;
    let received = 0;
    const control = new AbortController();
    const refuted = () => {
      if (!proven || control.signal.aborted) return control.signal.aborted;
      const { size, name } = proven;
      const claim = announced.size !== undefined && announced.size !== size ? `announced ${announced.size}` : received > size ? `sent ${received}` : undefined;
      if (claim === undefined) return false;
      control.abort(`its upstream ${claim} bytes; ${name}'s upstream's bytes hashed to the digest in ${size}`);
      return true;
    };
    let markStreaming!: (size?: number) => void;
    let failStreaming!: (err: unknown) => void;
    const streaming = new Promise<number | undefined>((resolve, reject) => {
      markStreaming = (size) => {
        announced.size = size;
        if (!refuted()) resolve(size); // refuted: `done` rejects, and so does this
      };
      failStreaming = reject;
    });
    const watch: FillWatch = {
      signal: control.signal,
      onBytes(bytes) {
        received = bytes;
        if (proven && bytes > proven.size) refuted();
      },
    };
    const done = run(resolved, digest, owner, markStreaming, watch).finally(async () => {
      inflight.delete(digest);
      await stores.leases.releaseLease(fillLeaseKey(digest), owner).catch(() => undefined);
    });
    done.catch(failStreaming); // no-op once streaming resolved
    const running: RunningFill = {
      name: resolved.name,
      done,
      streaming,
      get announcedSize() {
        return announced.size;
      },
      holdTo(size, name) {
        proven = { size, name };
        return refuted();
      },
      get heldTo() {
        return proven?.size;
      },
    };
    inflight.set(digest, running);
    // A background fill nobody awaits must not become an unhandled rejection.
    done.catch(() => undefined);
    streaming.catch(() => undefined);
    return running;
  }

  return { running: (digest) => inflight.get(digest), count: () => inflight.size, start, run };
}
