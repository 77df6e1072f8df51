/**
 * One repository as the lifecycle sees it, and what to keep of it. A repository is read whole (paged underneath),
 * with its manifests' bodies parsed down to their references, so memory is bounded by the largest repository,
 * never by the store (DynamoDB + S3 hold one repository per partition).
 *
 * Retention (applied per repository by {@link planRepository}):
 * - a tag is evicted when a purge or a budget names it, or when it was not pulled for `expireAfterUnpulledDays`
 *   (unless it matches `keepTags`);
 * - a manifest is kept when a kept tag points at it, when its own last pull is within the expiry (every manifest,
 *   without an expiry), or when it was pulled or stored within the protection window; and so is every manifest a
 *   kept index lists (its children), transitively. Everything else is deleted — except what a budget or purge
 *   names explicitly, which loses its own claims (last pull, protection) but stays if a kept tag or index still
 *   refers to it.
 * Blobs are not decided here: a blob goes when no manifest of any repository references it (gc.ts).
 */
import type { Digest } from '../../oci/digest.js';
import { isIndexMediaType } from '../../oci/media-types.js';
import type { LifecycleIndex, ManifestVerification, TagRecord } from '../../store/ports.js';

/** A descriptor a manifest lists: digest and declared size (bytes). */
export interface Reference {
  digest: Digest;
  size: number;
}

/** A stored manifest without its body: what it references, and when it was last pulled (ms). */
export interface ManifestInfo {
  digest: Digest;
  mediaType: string;
  /** Body size in bytes. */
  size: number;
  pulledAt: number;
  /** Manifests an index lists (empty for an image manifest). */
  children: Reference[];
  /** Blobs an image manifest references: config and layers (empty for an index). */
  blobs: Reference[];
  /** The signature policy's verdict stored with it, if any (signature-check.ts). */
  verification?: ManifestVerification;
}

/** One repository: its tags and manifests. */
export interface RepositoryState {
  name: string;
  tags: TagRecord[];
  manifests: Map<Digest, ManifestInfo>;
}

/** A tag's last pull (ms): `pulledAt`, or its fetch time for records written before the lifecycle. */
export const tagPulledAt = (t: TagRecord): number => t.pulledAt ?? t.fetchedAt;

const PAGE = 500;

/** Parses a manifest body into its references; a body that is not JSON references nothing. */
export function referencesOf(mediaType: string, body: Uint8Array): { children: Reference[]; blobs: Reference[] } {
  let m: { manifests?: unknown; config?: unknown; layers?: unknown };
  try {
    m = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    return { children: [], blobs: [] };
  }
  const descriptors = (list: unknown): Reference[] =>
    (Array.isArray(list) ? list : [])
      .filter((d): d is { digest: string; size?: unknown } => typeof d?.digest === 'string')
      .map((d) => ({ digest: d.digest as Digest, size: typeof d.size === 'number' ? d.size : 0 }));
  if (isIndexMediaType(mediaType) || Array.isArray(m.manifests)) return { children: descriptors(m.manifests), blobs: [] };
  return { children: [], blobs: descriptors([m.config, ...(Array.isArray(m.layers) ? m.layers : [])]) };
}

/** Reads a whole repository (tags, then manifests, in pages of 500). */
export async function readRepository(index: LifecycleIndex, name: string): Promise<RepositoryState> {
  const tags: TagRecord[] = [];
  for (let after: string | undefined, page = 0; page < 1_000_000; page++) {
    const batch = await index.listTagRecords(name, { after, limit: PAGE });
    tags.push(...batch);
    if (batch.length < PAGE) break;
    after = batch[batch.length - 1].tag;
  }
  const manifests = new Map<Digest, ManifestInfo>();
  for (let after: string | undefined, page = 0; page < 1_000_000; page++) {
    const batch = await index.listManifestRecords(name, { after, limit: PAGE });
    for (const r of batch) {
      manifests.set(r.digest, {
        digest: r.digest, mediaType: r.mediaType, size: r.size, pulledAt: r.pulledAt ?? 0, ...referencesOf(r.mediaType, r.body),
        ...(r.verification ? { verification: r.verification } : {}),
      });
    }
    if (batch.length < PAGE) break;
    after = batch[batch.length - 1].digest;
  }
  return { name, tags, manifests };
}

/** What decides a repository's retention (times in ms). */
export interface RetentionRules {
  now: number;
  /** Evict tags and manifests last pulled before this; undefined: no expiry. */
  expireBefore?: number;
  /** Tags never evicted by expiry (purges and budgets name tags explicitly). */
  keepTags?: RegExp;
  /** Manifests pulled or stored at or after this are kept (unless named below); undefined: none are. */
  protectFrom?: number;
  /** Tags to evict whatever their times (a purge, a budget). */
  evictTags?: Set<string>;
  /** Manifests that lose their own claims (a purge, a budget): kept only if a kept tag or index refers to them. */
  dropManifests?: Set<Digest>;
}

/** What {@link planRepository} decided. */
export interface RepositoryPlan {
  deleteTags: TagRecord[];
  deleteManifests: ManifestInfo[];
  keptManifests: ManifestInfo[];
}

/** The manifests reachable from `roots` through index children (only those stored in the repository). */
export function closure(state: RepositoryState, roots: Iterable<Digest>): Set<Digest> {
  const seen = new Set<Digest>();
  const stack = [...roots];
  while (stack.length > 0) {
    const d = stack.pop()!;
    const m = state.manifests.get(d);
    if (!m || seen.has(d)) continue;
    seen.add(d);
    for (const c of m.children) stack.push(c.digest);
  }
  return seen;
}

/** Decides what of `state` to delete under `rules` (see the file header). */
export function planRepository(state: RepositoryState, rules: RetentionRules): RepositoryPlan {
  const expired = (at: number) => rules.expireBefore !== undefined && at < rules.expireBefore;
  const deleteTags: TagRecord[] = [];
  const roots = new Set<Digest>();
  for (const t of state.tags) {
    const evict = rules.evictTags?.has(t.tag) || (expired(tagPulledAt(t)) && !rules.keepTags?.test(t.tag));
    if (evict) deleteTags.push(t);
    else roots.add(t.digest);
  }
  for (const m of state.manifests.values()) {
    if (rules.dropManifests?.has(m.digest)) continue;
    const isProtected = rules.protectFrom !== undefined && m.pulledAt >= rules.protectFrom;
    if (isProtected || !expired(m.pulledAt)) roots.add(m.digest);
  }
  const kept = closure(state, roots);
  const deleteManifests: ManifestInfo[] = [];
  const keptManifests: ManifestInfo[] = [];
  for (const m of state.manifests.values()) (kept.has(m.digest) ? keptManifests : deleteManifests).push(m);
  return { deleteTags, deleteManifests, keptManifests };
}

/**
 * An eviction unit of a budget: a top-level manifest (one no index of the repository lists) with every manifest
 * it reaches and every tag pointing into them, or a tag whose manifest is not stored. `pulledAt` is the latest
 * pull of any part; `bytes` the manifests' bodies plus the blobs they declare (an upper bound of what evicting it
 * frees: blobs may be shared).
 */
export interface EvictionUnit {
  name: string;
  tags: string[];
  manifests: Digest[];
  pulledAt: number;
  bytes: number;
  /** A tag matches keepTags: never evicted by a budget. */
  keep: boolean;
}

/** The eviction units of a repository (see {@link EvictionUnit}). */
export function unitsOf(state: RepositoryState, keepTags?: RegExp): EvictionUnit[] {
  const listed = new Set<Digest>();
  for (const m of state.manifests.values()) for (const c of m.children) if (state.manifests.has(c.digest)) listed.add(c.digest);
  const tagsOf = new Map<Digest, TagRecord[]>();
  for (const t of state.tags) tagsOf.set(t.digest, [...(tagsOf.get(t.digest) ?? []), t]);
  const units: EvictionUnit[] = [];
  const covered = new Set<string>();
  for (const top of state.manifests.values()) {
    if (listed.has(top.digest)) continue;
    const members = [...closure(state, [top.digest])];
    const tags = members.flatMap((d) => tagsOf.get(d) ?? []);
    for (const t of tags) covered.add(t.tag);
    const infos = members.map((d) => state.manifests.get(d)!);
    units.push({
      name: state.name,
      tags: tags.map((t) => t.tag),
      manifests: members,
      pulledAt: Math.max(...infos.map((m) => m.pulledAt), ...tags.map(tagPulledAt)),
      bytes: infos.reduce((sum, m) => sum + m.size + m.blobs.reduce((s, b) => s + b.size, 0), 0),
      keep: keepTags !== undefined && tags.some((t) => keepTags.test(t.tag)),
    });
  }
  for (const t of state.tags) {
    if (covered.has(t.tag)) continue;
    units.push({ name: state.name, tags: [t.tag], manifests: [], pulledAt: tagPulledAt(t), bytes: 0, keep: keepTags?.test(t.tag) ?? false });
  }
  return units;
}
