/**
 * Purge: an operator removes a tag (`<name>:<tag>`), a manifest (`<name>@<digest>`, with the tags pointing at it),
 * a repository (`<name>`), or everything under a rule (a bare rule prefix) — `keepTags` and recent pulls do not
 * protect anything here. The same deleting steps as the GC (collect.ts), unconditionally for what is named; what
 * another tag or index still refers to stays, and so does every blob another manifest references. Blobs are
 * unpublished at once (the next pull refills them from the upstream); their bytes go with the first GC pass after
 * the grace period.
 */
import { parseDigest, type Digest } from '../../oci/digest.js';
import type { LifecycleIndex } from '../../store/ports.js';
import type { RegistryDeps } from '../deps.js';
import { collectRepository, emptyCounts, releaseBlobs, type Collector, type Counts } from './collect.js';
import { ruleOfName } from './policy.js';
import { closure, readRepository, type RetentionRules } from './repository.js';

/** What a purge did. */
export interface PurgeReport extends Counts {
  target: string;
  /** Repositories the target matched. */
  repositories: number;
}

/** A parsed purge target. */
export type PurgeTarget =
  | { kind: 'rule'; prefix: string }
  | { kind: 'repository'; name: string }
  | { kind: 'tag'; name: string; tag: string }
  | { kind: 'digest'; name: string; digest: Digest };

/**
 * Parses `<name>[:<tag>|@<digest>]` or a bare rule prefix (`rules` are the configured prefixes). Names are the
 * cache's (`docker-hub/nginx` is `docker-hub/library/nginx`).
 * @throws Error for a malformed digest or a name no rule serves.
 */
export function parsePurgeTarget(deps: Pick<RegistryDeps, 'resolve'>, rules: string[], target: string): PurgeTarget {
  if (rules.includes(target)) return { kind: 'rule', prefix: target };
  const at = target.indexOf('@');
  if (at !== -1) {
    const digest = target.slice(at + 1);
    if (!parseDigest(digest)) throw new Error(`not a digest: ${digest}`);
    return { kind: 'digest', name: deps.resolve(target.slice(0, at)).name, digest: digest as Digest };
  }
  const colon = target.indexOf(':'); // names cannot contain ':', tags cannot contain '/'
  if (colon !== -1) return { kind: 'tag', name: deps.resolve(target.slice(0, colon)).name, tag: target.slice(colon + 1) };
  return { kind: 'repository', name: deps.resolve(target).name };
}

/** Purges `target` (see the file header). */
export async function purge(deps: RegistryDeps, c: Collector, target: PurgeTarget, label: string): Promise<PurgeReport> {
  const index: LifecycleIndex = c.index;
  const names: string[] = [];
  if (target.kind === 'rule') {
    for (let last: string | undefined, page = 0; page < 100_000; page++) {
      const batch = await deps.stores.tags.listRepositories({ last, n: 1000 });
      names.push(...batch.filter((n) => n.startsWith(`${target.prefix}/`) && ruleOfName(deps, n) === target.prefix));
      if (batch.length < 1000) break;
      last = batch[batch.length - 1];
    }
  } else {
    names.push(target.name);
  }
  let repositories = 0;
  const before = { ...c.counts };
  for (const name of names) {
    const state = await readRepository(index, name);
    if (state.tags.length === 0 && state.manifests.size === 0) {
      // Nothing to purge, but what a repository without content may still hold (links, listings) goes.
      if (!c.dryRun) await index.dropRepositoryIfEmpty(name);
      continue;
    }
    let rules: RetentionRules;
    if (target.kind === 'tag') {
      const tag = state.tags.find((t) => t.tag === target.tag);
      if (!tag) continue;
      rules = { now: c.now(), evictTags: new Set([tag.tag]), dropManifests: closure(state, [tag.digest]) };
    } else if (target.kind === 'digest') {
      if (!state.manifests.has(target.digest)) continue;
      const dropped = closure(state, [target.digest]);
      rules = { now: c.now(), evictTags: new Set(state.tags.filter((t) => t.digest === target.digest).map((t) => t.tag)), dropManifests: dropped };
    } else {
      rules = { now: c.now(), evictTags: new Set(state.tags.map((t) => t.tag)), dropManifests: new Set(state.manifests.keys()) };
    }
    repositories++;
    const { released } = await collectRepository(c, name, rules, { conditional: false });
    await releaseBlobs(c, released);
  }
  const counts = emptyCounts();
  for (const k of Object.keys(counts) as Array<keyof Counts>) counts[k] = c.counts[k] - before[k];
  deps.log.info('purge done', { target: label, repositories, ...counts });
  return { target: label, repositories, ...counts };
}
