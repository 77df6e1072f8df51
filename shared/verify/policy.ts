/**
 * A rule's signature policies, compiled once per rule object: the keys parsed, the repository pattern compiled, the
 * key set's id computed. {@link policyFor} picks the policy of one upstream repository: the first of the rule's
 * policies whose `repositories` matches it (no pattern: every repository); `off`, or none matching, means unchecked.
 */
import type { VerifyPolicyConfig } from '../config-verify.js';
import { keySetId, parseTrustedKey, type TrustedKey } from './keys.js';

/** A policy that checks (mode `enforce` or `warn`). `keySet` identifies `keys` (stored with each result). */
export interface SignaturePolicy {
  mode: 'enforce' | 'warn';
  keys: TrustedKey[];
  keySet: string;
}

type Compiled = { repositories?: RegExp; policy?: SignaturePolicy };
const compiled = new WeakMap<object, Compiled[]>();

function compile(policies: readonly VerifyPolicyConfig[]): Compiled[] {
  return policies.map((p) => {
    const repositories = p.repositories === undefined ? undefined : new RegExp(p.repositories);
    if (p.mode === 'off') return { repositories };
    const keys = p.keys.map(parseTrustedKey);
    return { repositories, policy: { mode: p.mode, keys, keySet: keySetId(keys) } };
  });
}

/**
 * The policy covering `upstreamRepository` under a rule's `verify` list, or undefined when it is not checked.
 * @throws Error when a key does not parse (config loading checks them first, so only for configs built otherwise).
 */
export function policyFor(rule: { verify?: readonly VerifyPolicyConfig[] }, upstreamRepository: string): SignaturePolicy | undefined {
  const list = rule.verify;
  if (!list || list.length === 0) return undefined;
  let policies = compiled.get(list);
  if (!policies) {
    policies = compile(list);
    compiled.set(list, policies);
  }
  return policies.find((p) => !p.repositories || p.repositories.test(upstreamRepository))?.policy;
}
