/**
 * Token scopes (Docker "Token Scope Documentation"): what a client asks for at the token endpoint, and what it
 * is granted. The cache is read-only, so the only action ever granted is `pull`.
 *
 * Grammar: `scope` is repeatable (containerd sends one parameter per repository; the OAuth2 POST form joins
 * them with spaces), each `resourcetype[(resourceclass)]:resourcename:action[,action...]`. Granted:
 * - `repository:<name>:pull` when the identity may pull the name's rule (below);
 * - `registry:catalog:*` (listing `/v2/_catalog`) only to identities with the `*` prefix: the catalog names
 *   every repository of every rule;
 * - nothing else: resource classes such as `repository(plugin)`, other types, malformed scopes and actions
 *   other than `pull` (`push`, `delete`, `*`) are dropped silently, as the spec allows (a token may grant less
 *   than asked; the registry then answers 403).
 *
 * Names and mirror clients: the guard authorizes a request by the **canonical** name it is served as
 * (`<rule prefix>/<upstream repository>`, after `?ns=` mirror mapping, the default rule and Docker Hub's
 * `library/`), because only that says which rule (and so which upstream) is reached. The scope carries the
 * name as the client wrote it in its path and no `ns`, so a requested name is granted in every canonical form
 * it can take: as it is (or under the default rule) and, for a containerd mirror, under each rule that an
 * `ns` could select. Only forms whose rule prefix the identity holds are granted, and the token lists exactly
 * those canonical names (e.g. a request for `docker-hub/alpine` yields `docker-hub/library/alpine`; for
 * `library/nginx` from a user of `local`, `local/library/nginx`, which is what a containerd mirror of the
 * `local` upstream would pull). A form an identity may not pull is never listed, so no `ns` can widen a token.
 */
import type { Identity } from './types.js';

/** One requested or granted access (the JWT `access` claim's element). */
export interface ResourceActions {
  type: string;
  name: string;
  actions: string[];
}

/** At most this many scopes are read from one token request (bounds the token's size). */
export const MAX_SCOPES = 16;

/**
 * Parses `scope` values (each may hold several space-separated scopes). Malformed entries and resource
 * classes (`repository(plugin):...`) are dropped. The name is everything between the first and the last `:`.
 */
export function parseScopes(values: readonly string[]): ResourceActions[] {
  const out: ResourceActions[] = [];
  for (const value of values) {
    for (const scope of value.split(' ')) {
      if (scope === '' || out.length >= MAX_SCOPES) continue;
      const first = scope.indexOf(':');
      const last = scope.lastIndexOf(':');
      if (first <= 0 || last === first) continue;
      const type = scope.slice(0, first);
      const name = scope.slice(first + 1, last);
      const actions = scope.slice(last + 1).split(',').filter((a) => a !== '');
      if (!/^[a-z0-9]+$/.test(type) || name === '' || actions.length === 0) continue; // `repository(plugin)` fails here
      out.push({ type, name, actions: [...new Set(actions)] });
    }
  }
  return out;
}

/** Formats a scope for a challenge: `repository:<name>:pull`. */
export function formatScope(access: ResourceActions): string {
  return `${access.type}:${access.name}:${access.actions.join(',')}`;
}

/** True when the identity may pull names of the rule with this prefix. */
export function mayPullPrefix(identity: Pick<Identity, 'prefixes'>, prefix: string): boolean {
  return identity.prefixes.includes('*') || identity.prefixes.includes(prefix);
}

/** What grant decisions need from the rules (the registry's own resolution, so both agree). */
export interface NameResolution {
  /** Rule prefixes, in config order. */
  prefixes: readonly string[];
  /** The registry's mirror mapping: `ns` given → `<rule for ns>/<name>`; none → default rule or unchanged. */
  mirrorName(name: string, ns?: string): string;
  /** The canonical name and its rule prefix; throws for names no rule serves or that break the grammar. */
  resolve(name: string): { name: string; rule: { prefix: string } };
}

/** Every canonical name `name` (as a client requests it) can be served as, with the rule prefix of each. */
export function canonicalForms(rules: NameResolution, name: string): Array<{ name: string; prefix: string }> {
  const candidates = [rules.mirrorName(name), ...rules.prefixes.map((p) => `${p}/${name}`)];
  const forms = new Map<string, string>();
  for (const c of candidates) {
    try {
      const r = rules.resolve(c);
      forms.set(r.name, r.rule.prefix);
    } catch {
      /* not servable in this form */
    }
  }
  return [...forms].map(([n, prefix]) => ({ name: n, prefix }));
}

/**
 * Grants requested ∩ allowed (see the module comment). The result is the token's `access` claim: entries
 * with `actions: ['pull']` (or `['*']` for the catalog), deduplicated, in request order.
 */
export function grantAccess(requested: readonly ResourceActions[], identity: Pick<Identity, 'prefixes'>, rules: NameResolution): ResourceActions[] {
  const granted = new Map<string, ResourceActions>();
  const add = (a: ResourceActions) => granted.set(`${a.type}:${a.name}`, a);
  for (const r of requested) {
    if (r.type === 'registry' && r.name === 'catalog' && (r.actions.includes('*') || r.actions.includes('pull'))) {
      if (identity.prefixes.includes('*')) add({ type: 'registry', name: 'catalog', actions: ['*'] });
      continue;
    }
    if (r.type !== 'repository' || !r.actions.includes('pull')) continue;
    for (const f of canonicalForms(rules, r.name)) {
      if (mayPullPrefix(identity, f.prefix)) add({ type: 'repository', name: f.name, actions: ['pull'] });
    }
  }
  return [...granted.values()];
}

/** True when `access` (a verified token's claim) grants `action` on `type:name`. */
export function hasAccess(access: readonly ResourceActions[], type: string, name: string, action: string): boolean {
  return access.some((a) => a.type === type && a.name === name && (a.actions.includes(action) || a.actions.includes('*')));
}
