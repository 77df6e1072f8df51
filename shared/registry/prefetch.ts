/**
 * Prefetch: fill the cache with an image before anyone pulls it (a rollout's first node then pays no miss). The
 * image's manifest is fetched as a pull would (by tag: fresh tags answer from the cache, stale ones are re-checked),
 * then for an image index every platform's manifest (or the platforms asked for), then every blob they reference,
 * each through the blob service's miss path (its fill lease, so a prefetch beside a running server never downloads
 * a blob twice). What is cached already costs no upstream request (a stale tag's re-check aside): prefetching twice
 * is a no-op the second time.
 *
 * Used by `npx pullthrough prefetch` and by the scheduled pass for the config's `prefetch:` list (scheduled.ts).
 */
import pLimit from 'p-limit';
import type { Digest } from '../oci/digest.js';
import { isIndexMediaType } from '../oci/media-types.js';
import { inScope, newScope, type RequestScope } from '../observe/request-scope.js';
import type { BlobService } from './blobs.js';
import type { ManifestService } from './manifests.js';

/** An image reference: `<name>:<tag>` or `<name>@<digest>` (`name` as clients pull it, with the rule prefix). */
export interface ImageRef {
  name: string;
  reference: string;
}

/**
 * Parses `<name>:<tag>` or `<name>@<digest>`.
 * @throws RangeError when there is neither a tag nor a digest.
 */
export function parseImageRef(text: string): ImageRef {
  const at = text.indexOf('@');
  if (at > 0) return { name: text.slice(0, at), reference: text.slice(at + 1) };
  const colon = text.lastIndexOf(':');
  if (colon > text.lastIndexOf('/') && colon > 0) return { name: text.slice(0, colon), reference: text.slice(colon + 1) };
  throw new RangeError(`${text}: give a tag or a digest (<name>:<tag> or <name>@<digest>)`);
}

/** A platform as in an index's descriptors: `os/architecture[/variant]`, e.g. `linux/arm64/v8`. */
type Platform = { os?: string; architecture?: string; variant?: string };
const platformText = (p: Platform | undefined) => (p ? [p.os, p.architecture, p.variant].filter(Boolean).join('/') : 'unknown');
/** `linux/arm64` matches `linux/arm64/v8` (no variant asked: any); `linux/arm/v7` only v7. */
function platformMatches(asked: string, p: Platform | undefined): boolean {
  const [os, arch, variant] = asked.split('/');
  return p?.os === os && p?.architecture === arch && (variant === undefined || p?.variant === variant);
}

/** The plan of one image: its manifests and blobs. Bytes. */
export interface PrefetchPlan {
  digest: Digest;
  /** Platforms of the image manifests to fill (`os/arch[/variant]`); one entry `single` for a plain image. */
  platforms: string[];
  blobs: number;
  bytes: number;
}

/** What prefetching one image did. Bytes. */
export interface PrefetchResult extends PrefetchPlan {
  image: string;
  /** Blobs that were stored already. */
  cachedBlobs: number;
  /** Bytes received from the upstream for the blobs (0 when everything was cached). */
  fetchedBytes: number;
}

/** Where prefetch reports progress (the CLI draws it). `done` bytes of the plan's `bytes`. */
export interface PrefetchProgress {
  planned?(plan: PrefetchPlan): void;
  progress?(done: number): void;
}

/** Rounds of the blob miss path one blob may take (each waits up to `blobFill.waitSeconds` for the fill). */
const MAX_ROUNDS = 500;

/**
 * Prefetches one image (see the file header). `platforms` (`os/arch[/variant]`) limits which of an index's images
 * are filled; empty: all of them (attestations included).
 * @throws RegistryError as a pull would (unknown image, upstream unavailable); RangeError for a platform the index
 *   does not have.
 */
export async function prefetchImage(
  services: { manifests: ManifestService; blobs: BlobService },
  ref: ImageRef,
  opts: { platforms?: string[]; concurrency?: number; report?: PrefetchProgress } = {},
): Promise<PrefetchResult> {
  const { manifests, blobs } = services;
  const asked = opts.platforms ?? [];
  const top = await manifests.get(ref.name, ref.reference);
  const images: Array<{ platform: string; digest: Digest }> = [];
  if (isIndexMediaType(top.mediaType)) {
    const index = JSON.parse(Buffer.from(top.body).toString('utf8')) as { manifests?: Array<{ digest: Digest; platform?: Platform }> };
    const children = index.manifests ?? [];
    for (const p of asked) {
      if (!children.some((c) => platformMatches(p, c.platform))) throw new RangeError(`${ref.name}:${ref.reference} has no ${p} image (it has ${children.map((c) => platformText(c.platform)).join(', ')})`);
    }
    for (const c of children) if (asked.length === 0 || asked.some((p) => platformMatches(p, c.platform))) images.push({ platform: platformText(c.platform), digest: c.digest });
  }
  // Each image manifest's blobs (config and layers), with the sizes their descriptors give.
  const sizes = new Map<Digest, number>();
  const readBlobs = (body: Uint8Array) => {
    const m = JSON.parse(Buffer.from(body).toString('utf8')) as { config?: { digest: Digest; size?: number }; layers?: Array<{ digest: Digest; size?: number }> };
    for (const d of [m.config, ...(m.layers ?? [])]) if (d?.digest) sizes.set(d.digest, Number(d.size ?? 0));
  };
  if (images.length === 0) readBlobs(top.body);
  for (const image of images) readBlobs((await manifests.get(ref.name, image.digest)).body);

  const plan: PrefetchPlan = {
    digest: top.digest,
    platforms: images.length ? images.map((i) => i.platform) : ['single'],
    blobs: sizes.size,
    bytes: [...sizes.values()].reduce((a, b) => a + b, 0),
  };
  opts.report?.planned?.(plan);
  let done = 0;
  let cachedBlobs = 0;
  const filling = new Set<RequestScope>();
  const tick = () => opts.report?.progress?.(done + [...filling].reduce((a, s) => a + s.upstreamBytes, 0));
  const ticker = opts.report?.progress ? setInterval(tick, 200) : undefined;
  let fetchedBytes = 0;
  try {
    const limit = pLimit(opts.concurrency ?? 3);
    await Promise.all([...sizes].map(([digest, size]) => limit(async () => {
      // One scope per blob: its fill's upstream bytes are counted in it as they arrive (the progress).
      const scope = newScope();
      filling.add(scope);
      let wasStored = false;
      try {
        for (let round = 0; ; round++) {
          const answer = await inScope(scope, () => blobs.locate(ref.name, digest));
          if (round === 0) wasStored = scope.cache === 'hit';
          if (answer.kind === 'blob') break;
          if (round >= MAX_ROUNDS) throw new Error(`${digest}: still being filled after ${MAX_ROUNDS} waits`);
        }
      } finally {
        filling.delete(scope);
      }
      if (wasStored) cachedBlobs++;
      fetchedBytes += scope.upstreamBytes;
      done += size;
      tick();
    })));
  } finally {
    if (ticker) clearInterval(ticker);
  }
  return { image: `${ref.name}${ref.reference.includes(':') ? '@' : ':'}${ref.reference}`, ...plan, cachedBlobs, fetchedBytes };
}
