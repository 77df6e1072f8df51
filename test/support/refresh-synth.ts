/**
 * The synthetic cache of the refresh at scale, shared by test/unit/refresh-scale.test.ts and bench/refresh.ts:
 * tag i lives in repository i % repos (`team-NNN/app`, cached as `p/team-NNN/app`, tag `tNNN`); every 10th tag
 * is not due; `moved` due tags (every tags/moved-th) have moved upstream.
 */
import { createHash } from 'node:crypto';
import type { Digest } from '../../shared/oci/digest.js';
import { OCI_MANIFEST, referencedBlobs } from '../../shared/oci/media-types.js';
import type { ManifestStore, TagIndex } from '../../shared/store/ports.js';

export const HOUR = 3600 * 1000;

/** One synthetic cached tag. */
export interface SynthTag {
  /** Upstream repository `team-NNN/app`. */
  repo: string;
  /** Cache-side name `p/<repo>`. */
  name: string;
  tag: string;
  due: boolean;
  moved: boolean;
  /** i: the tag's position, which {@link manifestBody} takes. */
  index: number;
  /** The cached manifest (revision 0). */
  cached: { digest: Digest; body: Buffer };
  /** What the upstream has under the tag at first: revision 1 when moved, else the cached manifest. */
  upstream: { digest: Digest; body: Buffer };
  dueAt: number;
}

/** Shape of the synthetic cache. */
export interface SynthOptions {
  tags: number;
  repos: number;
  /** How many due tags moved upstream; `tags / moved` must be a multiple of 10 (so they are due). */
  moved: number;
  /** A tag not due is due this long (plus i seconds) after `now`. */
  notDueInMs: number;
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;
/** A syntactically valid digest for blobs nobody fetches (the refresh never touches blobs). */
const fakeBlobDigest = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;

/** Manifest `revision` of tag `i` (revision 0 is the one cached; a moved tag gets 1, 2, … upstream). */
export function manifestBody(i: number, revision: number): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: fakeBlobDigest(i * 1000 + revision), size: 100 + i },
      layers: [],
      annotations: { 'org.example.revision': String(revision) },
    }),
  );
}

/** The synthetic tags. Due times are spread (not in insertion order) so the index's batches mix repositories. */
export function synthesizeTags(now: number, o: SynthOptions): SynthTag[] {
  const out: SynthTag[] = [];
  const stride = Math.floor(o.tags / o.moved);
  for (let i = 0; i < o.tags; i++) {
    const repo = `team-${String(i % o.repos).padStart(3, '0')}/app`;
    const due = i % 10 !== 9;
    const moved = due && i % stride === 0;
    const cachedBody = manifestBody(i, 0);
    const cached = { digest: sha256(cachedBody), body: cachedBody };
    const movedBody = moved ? manifestBody(i, 1) : undefined;
    out.push({
      repo, name: `p/${repo}`, tag: `t${String(Math.floor(i / o.repos)).padStart(3, '0')}`, due, moved, index: i, cached,
      upstream: movedBody ? { digest: sha256(movedBody), body: movedBody } : cached,
      dueAt: due ? now - 1 - ((i * 7919) % o.tags) * 1000 : now + o.notDueInMs + i * 1000,
    });
  }
  return out;
}

/** Seeds the index through the port: putManifest (the cached manifest), then putTag (checked an hour before due), per tag. */
export async function seedTagIndex(index: TagIndex & ManifestStore, tags: SynthTag[]): Promise<void> {
  for (const t of tags) {
    const body = t.cached.body;
    await index.putManifest({ name: t.name, digest: t.cached.digest, mediaType: OCI_MANIFEST, size: body.length, body }, referencedBlobs(OCI_MANIFEST, body));
    const checkedAt = t.dueAt - HOUR;
    await index.putTag({ name: t.name, tag: t.tag, digest: t.cached.digest, mediaType: OCI_MANIFEST, size: body.length, fetchedAt: checkedAt, checkedAt, dueAt: t.dueAt });
  }
}
