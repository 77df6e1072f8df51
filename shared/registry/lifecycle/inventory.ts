/**
 * `ls`: what the cache holds — per repository its tags and manifests with media types, last-pulled times and
 * stored bytes (a manifest's body plus the blobs it references that are stored; a repository's distinct ones).
 * Read-only; one repository in memory at a time.
 */
import type { Digest } from '../../oci/digest.js';
import type { ManifestVerification } from '../../store/ports.js';
import type { RegistryDeps } from '../deps.js';
import type { Collector } from './collect.js';
import { ruleOfName } from './policy.js';
import { readRepository, tagPulledAt } from './repository.js';

/** One manifest in a listing. Bytes; times ms. */
export interface ManifestListing {
  digest: Digest;
  mediaType: string;
  /** Tags pointing at it. */
  tags: string[];
  /** Body plus the stored blobs it references (an index: its own body only; see its children). */
  storedBytes: number;
  pulledAt: number;
  /** What the rule's signature policy found (absent: not checked). */
  verification?: ManifestVerification;
}

/** One repository in a listing. */
export interface RepositoryListing {
  name: string;
  rule: string;
  tags: Array<{ tag: string; digest: Digest; pulledAt: number }>;
  manifests: ManifestListing[];
  /** Manifest bodies plus the distinct stored blobs of the repository. */
  storedBytes: number;
}

/** Lists repositories named `filter` or under it (`<prefix>` or `<prefix>/<path>`); all without one. */
export async function* listInventory(deps: RegistryDeps, c: Collector, filter?: string): AsyncGenerator<RepositoryListing> {
  const sizes = new Map<Digest, number | null>();
  const storedSize = async (d: Digest) => {
    if (!sizes.has(d)) {
      const b = await c.reaper.storedBlob(d);
      if (sizes.size > 100_000) sizes.clear(); // a bounded memo: blobs shared by many repositories are looked up once
      sizes.set(d, b?.state === 'committed' ? b.size : null);
    }
    return sizes.get(d) ?? 0;
  };
  let canonical: string | undefined;
  try {
    canonical = filter ? deps.resolve(filter).name : undefined;
  } catch {
    canonical = undefined; // a bare rule prefix, or a path under one
  }
  const matches = (name: string) => !filter || name === filter || name === canonical || name.startsWith(`${filter}/`);
  for (let last: string | undefined, page = 0; page < 100_000; page++) {
    const names = await deps.stores.tags.listRepositories({ last, n: 1000 });
    for (const name of names.filter(matches)) {
      const repo = await readRepository(c.index, name);
      if (repo.tags.length === 0 && repo.manifests.size === 0) continue;
      const repoBlobs = new Set<Digest>();
      let storedBytes = 0;
      const manifests: ManifestListing[] = [];
      for (const m of repo.manifests.values()) {
        let bytes = m.size;
        for (const b of new Set(m.blobs.map((x) => x.digest))) {
          const size = await storedSize(b);
          bytes += size;
          if (!repoBlobs.has(b)) storedBytes += size;
          repoBlobs.add(b);
        }
        storedBytes += m.size;
        manifests.push({
          digest: m.digest, mediaType: m.mediaType, tags: repo.tags.filter((t) => t.digest === m.digest).map((t) => t.tag), storedBytes: bytes, pulledAt: m.pulledAt,
          ...(m.verification ? { verification: m.verification } : {}),
        });
      }
      yield {
        name, rule: ruleOfName(deps, name), storedBytes, manifests,
        tags: repo.tags.map((t) => ({ tag: t.tag, digest: t.digest, pulledAt: tagPulledAt(t) })),
      };
    }
    if (names.length < 1000) break;
    last = names[names.length - 1];
  }
}
