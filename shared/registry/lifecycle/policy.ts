/**
 * The lifecycle policy in force for a repository: its rule's `lifecycle` keys over the cache-wide ones
 * (config-lifecycle.ts), plus the settings every pass shares. Times in ms, sizes in bytes.
 */
import type { RegistryConfig } from '../../config.js';
import type { RegistryDeps } from '../deps.js';

const DAY_MS = 24 * 60 * 60 * 1000;

/** The policy of one rule (or of names no rule serves any more: the cache-wide one). */
export interface Policy {
  /** The rule prefix, or '' for names no configured rule serves. */
  rule: string;
  expireAfterMs?: number;
  keepTags?: RegExp;
  /** The rule's own budget (never the cache-wide one, which is {@link LifecycleSettings.maxBytes}). */
  maxBytes?: number;
}

/** Settings of a pass. */
export interface LifecycleSettings {
  /** Cache-wide budget, bytes. */
  maxBytes?: number;
  /** Grace period (ms) between unpublishing a blob and deleting its bytes; ≥ 2 × the signed-URL lifetime. */
  graceMs: number;
  /** Nothing pulled or stored within this window (ms: touch interval + grace) is evicted by a budget or expiry. */
  protectMs: number;
  maxRunMs: number;
  concurrency: number;
  /** Eviction candidates remembered per budget and round (budget.ts; default MAX_CANDIDATES, lower in tests). */
  maxCandidates?: number;
}

/** Builds the per-rule policies and the pass settings from the config; `graceSeconds` as runtime.ts computed it. */
export function createPolicies(config: RegistryConfig, graceSeconds: number): { settings: LifecycleSettings; policyOf(rule: string): Policy; rules: string[] } {
  const wide = config.lifecycle;
  const policies = new Map<string, Policy>();
  const build = (rule: string, own: RegistryConfig['rules'][number]['lifecycle'] = {}): Policy => {
    const days = own.expireAfterUnpulledDays ?? wide.expireAfterUnpulledDays;
    const keep = own.keepTags ?? wide.keepTags;
    return {
      rule,
      ...(days === undefined ? {} : { expireAfterMs: days * DAY_MS }),
      ...(keep === undefined ? {} : { keepTags: new RegExp(keep) }),
      ...(own.maxBytes === undefined ? {} : { maxBytes: own.maxBytes }),
    };
  };
  for (const r of config.rules) policies.set(r.prefix, build(r.prefix, r.lifecycle));
  const fallback = build('');
  return {
    settings: {
      ...(wide.maxBytes === undefined ? {} : { maxBytes: wide.maxBytes }),
      graceMs: graceSeconds * 1000,
      protectMs: (wide.touchIntervalSeconds + graceSeconds) * 1000,
      maxRunMs: wide.maxRunSeconds * 1000,
      concurrency: wide.concurrency,
    },
    policyOf: (rule) => policies.get(rule) ?? fallback,
    rules: config.rules.map((r) => r.prefix),
  };
}

/** The rule prefix serving a stored repository name, or '' when no configured rule serves it any more. */
export function ruleOfName(deps: Pick<RegistryDeps, 'resolve'>, name: string): string {
  try {
    const resolved = deps.resolve(name);
    return resolved.name === name ? resolved.rule.prefix : '';
  } catch {
    return '';
  }
}
