/**
 * Blobs through the cache. A blob is served for a repository only when that repository references it (a link,
 * written when one of its manifests is stored, or after the upstream confirms it with a HEAD).
 *
 * The miss path works under API Gateway's ~30 s limit (DESIGN.md, "The miss path"): the request takes the
 * fill lease and starts the fill (in the background here, or through `dispatchFill` on AWS), then waits up to
 * `fill.waitSeconds`. Filled in time → 307 to the stored blob. Not yet → 307 back to the same URL with a hop
 * counter (`?pt-hop=N`, the URL built by the app), so the client comes back and waits again. Past `fill.maxHops`, the rule's
 * `missFallback`. Concurrent misses of one digest wait on the same fill: one upstream download in total.
 *
 * Stream while filling (embedded backend, fill in this process, `stores.blobs.streamsWhileFilling`): a blob GET
 * does not wait for the commit. Its answer (307 to the store's location) goes out as soon as the upstream
 * answered the blob GET with 2xx and the store started writing, and the location serves the bytes while they
 * arrive (see fs-blob-store.ts for why that is safe: bytes verified before the client's body completes, a
 * mismatch cuts the connection, only verified bytes are committed). An upstream 404 still answers BLOB_UNKNOWN
 * at once, and a 401/5xx an error, since they come before any byte. Everything else is as above: one lease,
 * one download, hops while the upstream has not answered yet, polling a fill held by another process, and
 * HEAD (`stat`) still waits for the committed size unless the upstream HEAD gave one. The fill links the blob
 * to the repository when it commits; the upstream's 2xx to this repository's blob GET is the confirmation.
 */
import { randomUUID } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { assertDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { BlobLocation } from '../store/ports.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';
import type { ResolvedName } from './rules.js';

/** Query parameter carrying the hop count of a blob request redirected back to itself. */
export const HOP_PARAM = 'pt-hop';
/** Milliseconds between checks for a fill finished by another process. */
const POLL_MS = 200;

/**
 * What a blob GET answers: the blob's location, or "come back" (same URL, next hop). Sizes in bytes; `size` is
 * undefined only for a blob streamed while filling whose upstream sent no `Content-Length` (`filling` set).
 */
export type BlobAnswer =
  | { kind: 'blob'; digest: Digest; size?: number; location: BlobLocation; filling?: true }
  | { kind: 'retry'; digest: Digest; hop: number }
  | { kind: 'upstream'; digest: Digest; location: string };

/** Blob operations of the cache. */
export interface BlobService {
  /**
   * Size of the blob. A miss is answered from an upstream HEAD when it gives a size, else filled.
   * @throws RegistryError `DIGEST_INVALID` for a malformed digest, `BLOB_UNKNOWN` when neither the cache nor the
   *   upstream has it for this repository, `UNAVAILABLE`/`TOOMANYREQUESTS` when the upstream cannot answer.
   */
  stat(name: string, digest: string): Promise<{ digest: Digest; size: number }>;
  /** Answers a blob GET (`hop` = this request's hop count); fills on a miss. Throws as {@link stat}. */
  locate(name: string, digest: string, hop?: number): Promise<BlobAnswer>;
  /**
   * Runs one fill (the body of the fill function): upstream → verified store → link; releases `leaseOwner`'s
   * lease at the end when given. Returns the size in bytes.
   */
  fill(name: string, digest: string, leaseOwner?: string): Promise<number>;
}

/** Creates the blob service. */
export function createBlobService(deps: RegistryDeps): BlobService {
  const { stores, log } = deps;
  /**
   * Fills running in this process: `done` resolves with the committed size; `streaming` resolves (with the
   * upstream's announced size, if any) once the upstream answered 2xx and the store started writing, and rejects
   * only when the fill fails before that.
   */
  const inflight = new Map<Digest, { done: Promise<number>; streaming: Promise<number | undefined> }>();
  // "The upstream has no such blob for this repository", remembered for the rule's negativeCacheSeconds so
  // repeated misses (clients retry) do not hammer the upstream.
  const missing = new LRUCache<string, true>({ max: 10_000 });
  const rememberMiss = (resolved: ResolvedName | undefined, digest: string, err: unknown) => {
    const ttl = (resolved?.rule.negativeCacheSeconds ?? 0) * 1000;
    if (resolved && ttl > 0 && err instanceof UpstreamError && (err.failure === 'not-found' || err.failure === 'denied')) {
      missing.set(`${resolved.name}\n${digest}`, true, { ttl });
    }
  };
  const knownMissing = (resolved: ResolvedName, digest: Digest) => missing.get(`${resolved.name}\n${digest}`) === true;
  const leaseKey = (digest: Digest) => `blob:${digest}`;
  const streamsHere = () => !deps.dispatchFill && stores.blobs.streamsWhileFilling === true;

  /** `onWriting` is called once the store's write has begun (the bytes can be served from then on, see above). */
  async function fillNow(resolved: ResolvedName, digest: Digest, onWriting?: (expectedSize?: number) => void): Promise<number> {
    const upstream = deps.upstreamFor(resolved.rule);
    const started = deps.now();
    const blob = await upstream.getBlob(resolved.upstreamRepository, digest);
    let size: number;
    try {
      const writing = stores.blobs.write(digest, blob.stream, blob.size);
      onWriting?.(blob.size !== undefined && Number.isSafeInteger(blob.size) ? blob.size : undefined);
      ({ size } = await writing);
    } catch (err) {
      if (err instanceof RegistryError || err instanceof UpstreamError) throw err;
      // The body broke mid-transfer (connection reset, truncation): nothing was committed.
      log.warn('blob fill failed', { name: resolved.name, digest, reason: (err as Error).message });
      throw new UpstreamError('unavailable', `blob transfer failed: ${(err as Error).message}`);
    }
    await stores.links.link(resolved.name, digest);
    log.info('blob filled', { name: resolved.name, digest, size, ms: deps.now() - started });
    return size;
  }

  /** Runs a fill in this process under a lease already taken by `owner`; released when it ends. */
  function fillInBackground(resolved: ResolvedName, digest: Digest, owner: string) {
    let markStreaming!: (size?: number) => void;
    let failStreaming!: (err: unknown) => void;
    const streaming = new Promise<number | undefined>((resolve, reject) => {
      markStreaming = resolve;
      failStreaming = reject;
    });
    const done = fillNow(resolved, digest, markStreaming).finally(async () => {
      inflight.delete(digest);
      await stores.leases.releaseLease(leaseKey(digest), owner).catch(() => undefined);
    });
    done.catch(failStreaming); // no-op once streaming resolved
    const running = { done, streaming };
    inflight.set(digest, running);
    // A background fill nobody awaits must not become an unhandled rejection.
    done.catch(() => undefined);
    streaming.catch(() => undefined);
    return running;
  }

  /** Makes sure `name` may be served a stored blob: linked, or confirmed by an upstream HEAD and then linked. */
  async function ensureLinked(resolved: ResolvedName, digest: Digest): Promise<void> {
    if (await stores.links.isLinked(resolved.name, digest)) return;
    await deps.upstreamFor(resolved.rule).headBlob(resolved.upstreamRepository, digest);
    await stores.links.link(resolved.name, digest);
  }

  /**
   * Waits until the blob is stored or `deadline` (wall-clock ms) passes, starting a fill when nobody holds the lease.
   * Returns the size, or undefined at the deadline. A fill running in this process that fails rejects.
   * `untilStreaming`: a fill running in this process is waited for only until it started writing (then
   * `{ streaming: true, size: the announced size }`); a fill held by another process is still polled to its commit.
   */
  async function awaitFill(
    resolved: ResolvedName,
    digest: Digest,
    deadline: number,
    untilStreaming = false,
  ): Promise<{ size: number; streaming?: undefined } | { size?: number; streaming: true } | undefined> {
    for (let i = 0; ; i++) {
      const stored = await stores.blobs.stat(digest);
      if (stored) return { size: stored.size };
      let running = inflight.get(digest);
      if (!running) {
        const owner = randomUUID();
        if (await stores.leases.acquireLease(leaseKey(digest), owner, deps.fill.leaseSeconds)) {
          if (deps.dispatchFill) {
            await deps.dispatchFill({ name: resolved.name, digest, leaseOwner: owner });
          } else {
            running = fillInBackground(resolved, digest, owner);
          }
        }
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) return undefined;
      if (running) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const timeout = new Promise<'timeout'>((r) => {
          timer = setTimeout(() => r('timeout'), remaining);
        });
        try {
          if (untilStreaming) {
            const size = await Promise.race([running.streaming, timeout]);
            if (size !== 'timeout') return { size, streaming: true };
          } else {
            const size = await Promise.race([running.done, timeout]);
            if (size !== 'timeout') return { size };
          }
          const stored = await stores.blobs.stat(digest);
          return stored ? { size: stored.size } : undefined;
        } finally {
          clearTimeout(timer);
        }
      }
      // Another process fills: poll its commit (bounded by the deadline; i only guards against a stuck clock).
      if (i > 100_000) return undefined;
      await new Promise((r) => setTimeout(r, Math.min(POLL_MS, remaining)));
    }
  }

  async function prepare(name: string, rawDigest: string): Promise<{ resolved: ResolvedName; digest: Digest; size?: number }> {
    const resolved = deps.resolve(name);
    const digest = assertDigest(rawDigest);
    const stored = await stores.blobs.stat(digest);
    if (stored) {
      await ensureLinked(resolved, digest);
      return { resolved, digest, size: stored.size };
    }
    // The blobs route serves blobs only, never a manifest's bytes.
    if (await stores.manifests.getManifest(resolved.name, digest)) throw new RegistryError('BLOB_UNKNOWN');
    return { resolved, digest };
  }

  return {
    async stat(name, rawDigest) {
      let resolved: ResolvedName | undefined;
      try {
        const prepared = await prepare(name, rawDigest);
        resolved = prepared.resolved;
        const { digest, size } = prepared;
        if (size !== undefined) return { digest, size };
        if (knownMissing(resolved, digest)) throw new RegistryError('BLOB_UNKNOWN');
        const head = await deps.upstreamFor(resolved.rule).headBlob(resolved.upstreamRepository, digest);
        if (head.size !== undefined && Number.isSafeInteger(head.size)) return { digest, size: head.size };
        const filled = await awaitFill(resolved, digest, Date.now() + deps.fill.waitSeconds * 1000);
        if (filled === undefined || filled.streaming) throw new RegistryError('UNAVAILABLE', 'blob is being fetched from the upstream; retry', { headers: { 'Retry-After': '10' } });
        await ensureLinked(resolved, digest);
        return { digest, size: filled.size };
      } catch (err) {
        rememberMiss(resolved, rawDigest, err);
        throw toRegistryError(err, 'BLOB_UNKNOWN');
      }
    },

    async locate(name, rawDigest, hop = 0) {
      let resolved: ResolvedName | undefined;
      try {
        const prepared = await prepare(name, rawDigest);
        resolved = prepared.resolved;
        const { digest, size } = prepared;
        if (size !== undefined) return { kind: 'blob', digest, size, location: await stores.blobs.locate(digest) };
        if (knownMissing(resolved, digest)) throw new RegistryError('BLOB_UNKNOWN');
        const filled = await awaitFill(resolved, digest, Date.now() + deps.fill.waitSeconds * 1000, streamsHere());
        if (filled?.streaming) {
          // Served while the fill runs; the fill links the blob when it commits (the upstream's 2xx confirmed it).
          return { kind: 'blob', digest, size: filled.size, location: await stores.blobs.locate(digest), filling: true };
        }
        if (filled !== undefined) {
          await ensureLinked(resolved, digest);
          return { kind: 'blob', digest, size: filled.size, location: await stores.blobs.locate(digest) };
        }
        if (hop < deps.fill.maxHops) {
          return { kind: 'retry', digest, hop: hop + 1 };
        }
        if (resolved.rule.missFallback === 'upstream-redirect') {
          const target = await deps.upstreamFor(resolved.rule).blobRedirect(resolved.upstreamRepository, digest);
          if (target) return { kind: 'upstream', digest, location: target };
        }
        throw new RegistryError('UNAVAILABLE', 'blob is still being fetched from the upstream; retry later', { headers: { 'Retry-After': '30' } });
      } catch (err) {
        rememberMiss(resolved, rawDigest, err);
        throw toRegistryError(err, 'BLOB_UNKNOWN');
      }
    },

    async fill(name, rawDigest, leaseOwner) {
      const resolved = deps.resolve(name);
      const digest = assertDigest(rawDigest);
      try {
        const stored = await stores.blobs.stat(digest);
        if (stored) {
          await stores.links.link(resolved.name, digest);
          return stored.size;
        }
        return await fillNow(resolved, digest);
      } finally {
        if (leaseOwner) await stores.leases.releaseLease(leaseKey(digest), leaseOwner).catch(() => undefined);
      }
    },
  };
}
