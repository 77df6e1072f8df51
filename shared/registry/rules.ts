/**
 * Resolves a request name to its pull-through cache rule and upstream repository. The upstream host comes
 * only from the rule, never from the request. Docker Hub one-part names get `library/` so that
 * `docker-hub/alpine` and `docker-hub/library/alpine` are one cache entry.
 */
import type { PullThroughCacheRule } from '../config.js';
import { RegistryError } from '../oci/errors.js';
import { assertName } from '../oci/reference.js';

/** A name resolved against the rules. */
export interface ResolvedName {
  rule: PullThroughCacheRule;
  /** Repository name at the upstream, e.g. `library/nginx`. */
  upstreamRepository: string;
  /** Canonical cache-side name, `<prefix>/<upstream repository>`: the key of every stored item. */
  name: string;
}

const DOCKER_HUB_HOSTS = new Set(['registry-1.docker.io', 'docker.io', 'index.docker.io', 'registry.hub.docker.com']);

/** True when the rule's upstream is Docker Hub (or `dockerHubLibrary` says to behave like it). */
export function addsLibraryPrefix(rule: PullThroughCacheRule): boolean {
  return rule.dockerHubLibrary ?? DOCKER_HUB_HOSTS.has(new URL(rule.upstream).hostname);
}

/**
 * Builds the resolver for a rule list. Longest matching prefix wins (prefixes may contain `/`). The canonical
 * name is every stored item's key, so it must resolve to the same rule again: a Docker Hub one-part name whose
 * `library/` form another rule claims (`hub/nginx` → `hub/library/nginx` with a rule `hub/library`) is refused,
 * else the two upstreams would share cache entries (one name, one upstream: DESIGN.md).
 * @throws RegistryError `NAME_INVALID` for a name breaking the grammar, `NAME_UNKNOWN` when no rule matches,
 *   nothing follows the prefix, or the canonical name belongs to another rule.
 */
export function createRuleResolver(rules: PullThroughCacheRule[]): (name: string) => ResolvedName {
  const sorted = [...rules].sort((a, b) => b.prefix.length - a.prefix.length);
  const ruleOf = (name: string) => sorted.find((r) => name.startsWith(`${r.prefix}/`));
  return (rawName) => {
    const requested = assertName(rawName);
    const rule = ruleOf(requested);
    if (!rule) throw new RegistryError('NAME_UNKNOWN', 'no pull-through cache rule matches this name', { detail: { name: requested } });
    let upstreamRepository = requested.slice(rule.prefix.length + 1);
    if (!upstreamRepository.includes('/') && addsLibraryPrefix(rule)) upstreamRepository = `library/${upstreamRepository}`;
    const name = `${rule.prefix}/${upstreamRepository}`;
    if (ruleOf(name) !== rule) {
      throw new RegistryError('NAME_UNKNOWN', `ambiguous name: ${name} is served by another rule; use the full name`, { detail: { name: requested } });
    }
    return { rule, upstreamRepository, name };
  };
}

/** Hosts a containerd `ns` value may name for Docker Hub. */
const DOCKER_HUB_NAMESPACES = new Set(['docker.io', ...DOCKER_HUB_HOSTS]);

/**
 * Builds the mirror-name mapper (containerd `hosts.toml` mirrors, Docker `registry-mirrors`).
 * - `ns` given: the rule whose upstream host is `ns` (`docker.io` matches rules that add `library/`) gets the name as
 *   its upstream repository → `<prefix>/<name>`. No such rule → `NAME_UNKNOWN`.
 * - no `ns`: a name that starts with a rule prefix is kept; otherwise, with a `defaultRule` configured, it
 *   becomes `<defaultRule>/<name>`; without one it is kept (and fails resolution as `NAME_UNKNOWN`).
 */
export function createMirrorNames(rules: PullThroughCacheRule[], defaultRule?: string): (name: string, ns?: string) => string {
  const prefixes = rules.map((r) => r.prefix);
  return (name, ns) => {
    if (ns !== undefined) {
      const host = ns.toLowerCase();
      const rule = rules.find((r) => {
        const u = new URL(r.upstream);
        // `docker.io` names any rule that behaves as Docker Hub (upstream on a Docker Hub host, or dockerHubLibrary).
        return u.host === host || u.hostname === host || (DOCKER_HUB_NAMESPACES.has(host) && addsLibraryPrefix(r));
      });
      if (!rule) throw new RegistryError('NAME_UNKNOWN', 'no pull-through cache rule for this registry', { detail: { ns: ns.slice(0, 200) } });
      return `${rule.prefix}/${name}`;
    }
    if (defaultRule && !prefixes.some((p) => name.startsWith(`${p}/`))) return `${defaultRule}/${name}`;
    return name;
  };
}
