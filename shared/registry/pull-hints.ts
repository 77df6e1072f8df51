/**
 * Pull hints: which blobs a client is about to ask for. A client pulling an image GETs its manifest, then its
 * config and layers — skopeo's `dir:` and podman one after another, Docker three at a time. A cold pull through a
 * cache that fills each blob only when asked pays the upstream's transfer of every layer in sequence. So the
 * registry remembers, per name, the layers of the image manifests it just served (for {@link HINT_TTL_MS}), and
 * when a GET of one of those layers misses, the blob service starts fills of the next ones in the background
 * (blobs.ts): by the time the client asks for the next layer it is already arriving. Only a layer GET triggers them:
 * a manifest GET alone (a tag check) or with the config blob (`skopeo inspect`, `crane config`) fills nothing. Only
 * layers of a manifest served under the same name (a same-name fill: its upstream's 2xx is the proof,
 * blob-confirm.ts), at most {@link MAX_AHEAD} not yet started per miss, each through the fill lease (one upstream
 * download per digest, whoever asks).
 *
 * Bounded: at most {@link MAX_HINT_DIGESTS} digests remembered in all (least recently used manifests go first),
 * {@link MAX_BLOBS_PER_MANIFEST} per manifest; indexes give none (their platform manifests do, when pulled).
 */
import { LRUCache } from 'lru-cache';
import { isDigest, type Digest } from '../oci/digest.js';
import { isIndexMediaType } from '../oci/media-types.js';
import type { ManifestRecord } from '../store/ports.js';

/** How long the blobs of a served manifest are remembered (ms): a pull asks for them within seconds. */
export const HINT_TTL_MS = 60_000;
/** Fills started ahead per blob miss, at most. */
export const MAX_AHEAD = 4;
/** Layers remembered per manifest, at most (the first ones). */
export const MAX_BLOBS_PER_MANIFEST = 128;
/** Digests remembered in all, at most. */
export const MAX_HINT_DIGESTS = 50_000;

/** Pull hints (see the file header). */
export interface PullHints {
  /** A client GOT `record` (served under `record.name`). */
  noteManifest(record: ManifestRecord): void;
  /**
   * The layers to fill ahead now that layer `digest` missed under `name`: the next ones of a manifest just served
   * under that name not handed out before, in manifest order, at most {@link MAX_AHEAD}; [] when none is known.
   */
  ahead(name: string, digest: Digest): Digest[];
  /** A fill of `digest` was started ahead for `name` (so its first GET is still the pull's miss, not a hit). */
  startedAhead(name: string, digest: Digest): void;
  /** True (once) when `digest` was filled ahead for `name` and not asked for since: its first GET counts as a miss. */
  takeStartedAhead(name: string, digest: Digest): boolean;
}

/** The layer digests of an image manifest, in order ([] for an index or what does not parse). */
function layersOf(record: ManifestRecord): Digest[] {
  if (isIndexMediaType(record.mediaType)) return [];
  try {
    const m = JSON.parse(Buffer.from(record.body).toString('utf8')) as { layers?: Array<{ digest?: unknown }> };
    return (Array.isArray(m.layers) ? m.layers : []).map((l) => l?.digest).filter((d): d is Digest => typeof d === 'string' && isDigest(d));
  } catch {
    return [];
  }
}

interface Entry {
  name: string;
  blobs: Digest[];
  handedOut: Set<Digest>;
}

/** Creates the hints on the clock `now` (ms). */
export function createPullHints(now: () => number): PullHints {
  // name → keys of its remembered manifests (a name's entries are looked up on every miss of that name); a key
  // leaves with its entry, so this holds no more keys than the cache holds entries.
  const byName = new Map<string, Set<string>>();
  const manifests = new LRUCache<string, Entry>({
    maxSize: MAX_HINT_DIGESTS, sizeCalculation: (e) => Math.max(1, e.blobs.length), ttl: HINT_TTL_MS, ttlResolution: 0, perf: { now },
    dispose: (entry, key) => {
      const keys = byName.get(entry.name);
      keys?.delete(key);
      if (keys?.size === 0) byName.delete(entry.name);
    },
  });

  const startedAhead = new LRUCache<string, true>({ max: 10_000, ttl: 5 * HINT_TTL_MS, ttlResolution: 0, perf: { now } });
  return {
    startedAhead: (name, digest) => void startedAhead.set(`${name}\n${digest}`, true),
    takeStartedAhead: (name, digest) => startedAhead.delete(`${name}\n${digest}`),
    noteManifest(record) {
      const key = `${record.name}@${record.digest}`;
      if (manifests.has(key)) return;
      const blobs = layersOf(record).slice(0, MAX_BLOBS_PER_MANIFEST);
      if (blobs.length < 2) return;
      manifests.set(key, { name: record.name, blobs, handedOut: new Set() });
      let keys = byName.get(record.name);
      if (!keys) byName.set(record.name, (keys = new Set()));
      keys.add(key);
    },
    ahead(name, digest) {
      const keys = byName.get(name);
      if (!keys) return [];
      const out: Digest[] = [];
      for (const key of [...keys]) {
        const entry = manifests.get(key);
        if (!entry) continue; // expired: the get disposed of it
        if (!entry.blobs.includes(digest)) continue;
        entry.handedOut.add(digest);
        for (const d of entry.blobs) {
          if (out.length >= MAX_AHEAD) break;
          if (!entry.handedOut.has(d) && !out.includes(d)) {
            entry.handedOut.add(d);
            out.push(d);
          }
        }
      }
      return out;
    },
  };
}
