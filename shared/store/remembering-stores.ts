/**
 * Remembering what cannot change: a decorator over {@link Stores} that keeps, in the process's memory, the index
 * reads a warm pull repeats — committed blob sizes (`blobs.stat`), blob links (`links.isLinked`) and manifests by
 * repository and digest (`manifests.getManifest`). All three are immutable once written: a digest names its bytes,
 * a committed blob is never rewritten, a link records that an upstream confirmed a digest. (A manifest's signature
 * verdict is the one part that changes, through `recordVerification`, which updates what is remembered here.) What only the garbage
 * collector (or `purge`, `verify --repair`) can do is make them disappear, so:
 *
 * - **Bounded in time.** An entry is forgotten `ttlMs` after it was read or written: at most half the lifecycle's
 *   grace period (shared/registry/lifecycle/gc.ts, "Caches in memory": a process may remember a blob record or a
 *   manifest for at most `G/2`). A GC unpublishes a blob, then deletes its bytes `G` later; a process that read the
 *   record just before the unpublish hands out URLs for at most `G/2` more, each living at most the signed-URL
 *   lifetime (≤ `G/2`), so no URL outlives the bytes. Deletions in other processes (purge, repair) take effect here
 *   within `ttlMs` too: the runtime caps it at {@link MAX_REMEMBER_MS}.
 * - **Forgotten at once** when this process itself removes the thing: an in-process lifecycle pass (GC, purge,
 *   verify) goes through these same ports, so an unpublished blob, a dropped blob, a deleted manifest or a dropped
 *   repository's links are forgotten when it happens; and a manifest whose last-pulled write finds it gone.
 * - **Forgotten within about a second** when another process removed something: a lifecycle run that removed
 *   anything (a purge from the CLI or the gc function, a GC pass, `verify --repair`) ends by writing a new value
 *   under the lifecycle state key {@link FORGET_KEY} ({@link announceRemovals}); before answering from memory, this
 *   decorator reads that value when it last did so {@link FORGET_CHECK_MS} or longer ago (one read, shared by every
 *   request meanwhile) and forgets everything when it changed. A purged image is refilled by the next pull.
 * - **Bounded in size.** At most {@link MAX_ENTRIES} blob sizes and as many links (least recently used go first),
 *   and manifests up to {@link MAX_MANIFEST_BYTES} of bodies in all.
 * - **Positive answers only.** "Not there" is never remembered: a fill that commits elsewhere is seen at once.
 *
 * Everything else passes through untouched (a Proxy, so capabilities set later, such as the filesystem store's
 * `streamsWhileFilling`, are seen). Times come from `now` (ms; the registry clock, injected in tests).
 */
import { randomUUID } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Digest } from '../oci/digest.js';
import type { BlobLinks, BlobReaper, BlobStore, LifecycleIndex, ManifestRecord, ManifestStore, Stores } from './ports.js';

/** Longest time (ms) an entry is remembered, whatever the grace period: 10 minutes. */
export const MAX_REMEMBER_MS = 10 * 60 * 1000;
/** Most blob sizes, and most links, remembered (least recently used forgotten first). */
export const MAX_ENTRIES = 50_000;
/** Most manifest body bytes remembered in all (least recently used forgotten first): 32 MiB. */
export const MAX_MANIFEST_BYTES = 32 * 1024 * 1024;
/** Lifecycle state key whose value changes whenever a lifecycle run removed something (see the file header). */
export const FORGET_KEY = 'forget';
/** Least time (ms) between two reads of {@link FORGET_KEY} while answering from memory. */
export const FORGET_CHECK_MS = 1000;

/**
 * Tells every process remembering this store's records that something was removed (a lifecycle run that deleted
 * manifests or unpublished or dropped blobs calls it once, after its last removal). One write.
 */
export async function announceRemovals(index: LifecycleIndex, now: number): Promise<void> {
  await index.putLifecycleState(FORGET_KEY, JSON.stringify({ at: now, id: randomUUID() }));
}

/** Options of {@link rememberingStores}. */
export interface RememberOptions {
  /** How long an entry is remembered (ms); at most half the lifecycle's grace period. 0 turns remembering off. */
  ttlMs: number;
  /** Clock, ms since the epoch. */
  now(): number;
}

/** The grace period's half, capped at {@link MAX_REMEMBER_MS}: the `ttlMs` to use (ms) for `graceSeconds`. */
export const rememberMsFor = (graceSeconds: number) => Math.min(MAX_REMEMBER_MS, (graceSeconds * 1000) / 2);

const linkKey = (name: string, digest: string) => `${name}\n${digest}`;

/** Wraps `target` so the listed methods are replaced and everything else (methods bound) passes through. */
function override<T extends object>(target: T, methods: Partial<T>): T {
  return new Proxy(target, {
    get(t, prop, receiver) {
      if (Object.prototype.hasOwnProperty.call(methods, prop)) return (methods as Record<string | symbol, unknown>)[prop];
      const value = Reflect.get(t, prop, receiver) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(t) : value;
    },
  });
}

/** `stores` with immutable reads remembered (see the file header). */
export function rememberingStores(stores: Stores, opts: RememberOptions): Stores {
  if (opts.ttlMs <= 0) return stores;
  const common = { ttl: opts.ttlMs, ttlResolution: 0, perf: { now: opts.now } };
  const sizes = new LRUCache<string, number>({ max: MAX_ENTRIES, ...common });
  const links = new LRUCache<string, true>({ max: MAX_ENTRIES, ...common });
  const manifests = new LRUCache<string, ManifestRecord>({
    ...common, maxSize: MAX_MANIFEST_BYTES, maxEntrySize: MAX_MANIFEST_BYTES / 4, sizeCalculation: (m) => Math.max(1, m.body.byteLength),
  });
  const { blobs, links: linkPort, manifests: manifestPort, reaper, lifecycle } = stores;
  const forgetBlob = (digest: Digest) => void sizes.delete(digest);
  const forgetAll = () => {
    sizes.clear();
    links.clear();
    manifests.clear();
  };

  // What FORGET_KEY said when last read (undefined: never read), and when (ms).
  let seen: { value?: string; at: number } | undefined;
  let checking: Promise<boolean> | undefined;
  /**
   * True when memory may answer: FORGET_KEY was read within FORGET_CHECK_MS (read now otherwise, forgetting all on
   * a change and before the first read). A failed read forgets all and answers false: the stores answer instead.
   */
  async function memoryValid(): Promise<boolean> {
    if (!lifecycle) return true;
    if (seen && opts.now() - seen.at < FORGET_CHECK_MS) return true;
    checking ??= lifecycle.getLifecycleState(FORGET_KEY).then(
      (value) => {
        if (!seen || seen.value !== value) forgetAll();
        seen = { value, at: opts.now() };
        return true;
      },
      () => {
        forgetAll();
        seen = undefined;
        return false;
      },
    ).finally(() => (checking = undefined));
    return checking;
  }
  /**
   * Before a process's first store read or write that may be remembered, the marker is read (once): what is
   * remembered from then on is newer than the marker value seen, so a later change of it is a removal this memory
   * may predate. (A blob write reads it after the bytes are in: a removal of bytes just written is not one.)
   */
  const beforeRead = async () => {
    if (!seen) await memoryValid();
  };
  /** The remembered value for `key` in `cache`, when memory may answer. */
  async function recall<V extends object | number | boolean>(cache: LRUCache<string, V>, key: string): Promise<V | undefined> {
    if (!cache.has(key)) return undefined;
    return (await memoryValid()) ? cache.get(key) : undefined;
  }
  /** Runs `op`; when it reports a change (true), `forget` runs. */
  const forgetting = async (op: Promise<boolean>, forget: () => void) => {
    const changed = await op;
    if (changed) forget();
    return changed;
  };

  const rememberedBlobs = override<BlobStore>(blobs, {
    async stat(digest) {
      const size = await recall(sizes, digest);
      if (size !== undefined) return { size };
      await beforeRead();
      const stored = await blobs.stat(digest);
      if (stored) sizes.set(digest, stored.size);
      return stored;
    },
    async write(digest, source, expectedSize) {
      const written = await blobs.write(digest, source, expectedSize);
      await beforeRead();
      sizes.set(digest, written.size);
      return written;
    },
  });

  const rememberedLinks = override<BlobLinks>(linkPort, {
    async isLinked(name, digest) {
      if (await recall(links, linkKey(name, digest))) return true;
      await beforeRead();
      const linked = await linkPort.isLinked(name, digest);
      if (linked) links.set(linkKey(name, digest), true);
      return linked;
    },
    async link(name, digest) {
      await beforeRead();
      await linkPort.link(name, digest);
      links.set(linkKey(name, digest), true);
    },
  });

  const rememberedManifests = override<ManifestStore>(manifestPort, {
    async getManifest(name, digest) {
      const key = linkKey(name, digest);
      const known = await recall(manifests, key);
      if (known) return known;
      await beforeRead();
      const record = await manifestPort.getManifest(name, digest);
      if (record) manifests.set(key, record);
      return record;
    },
    async putManifest(record, referencedBlobs, rule) {
      await beforeRead();
      await manifestPort.putManifest(record, referencedBlobs, rule);
      manifests.set(linkKey(record.name, record.digest), record);
    },
    async recordVerification(name, digest, verification) {
      await manifestPort.recordVerification(name, digest, verification);
      // The one part of a stored manifest that changes (a verdict made again under new policy keys).
      const known = manifests.get(linkKey(name, digest));
      if (known) manifests.set(linkKey(name, digest), { ...known, verification });
    },
    recordManifestPull: (name, digest, pulledAt) =>
      manifestPort.recordManifestPull(name, digest, pulledAt).then((stored) => {
        if (!stored) manifests.delete(linkKey(name, digest)); // deleted meanwhile (another process's GC or purge)
        return stored;
      }),
  });

  const out: Stores = { ...stores, blobs: rememberedBlobs, links: rememberedLinks, manifests: rememberedManifests };
  if (reaper) {
    out.reaper = override<BlobReaper>(reaper, {
      unpublishBlob: (digest, at) => forgetting(reaper.unpublishBlob(digest, at), () => forgetBlob(digest)),
      dropBlob: async (digest) => {
        forgetBlob(digest);
        await reaper.dropBlob(digest);
      },
    });
  }
  if (lifecycle) {
    out.lifecycle = override<LifecycleIndex>(lifecycle, {
      deleteManifest: (name, digest, o) => forgetting(lifecycle.deleteManifest(name, digest, o), () => void manifests.delete(linkKey(name, digest))),
      dropRepositoryIfEmpty: (name) =>
        forgetting(lifecycle.dropRepositoryIfEmpty(name), () => {
          for (const key of [...links.keys()]) if (key.startsWith(`${name}\n`)) links.delete(key);
        }),
    });
  }
  return out;
}
