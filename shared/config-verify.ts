/**
 * The `verify` section of a rule: its signature policy (README "Signature policy"). One policy, or a list of them
 * for different upstream repositories (the first whose `repositories` matches applies):
 * ```yaml
 * verify:
 *   mode: enforce            # enforce | warn | off (default off)
 *   repositories: '^myorg/'  # optional: upstream repositories the policy covers (default: all)
 *   keys: [ ./cosign.pub ]   # PEM public keys, inline or file paths (relative to the config file)
 * ```
 * Key files are read, and every key parsed, when the config is loaded: a missing file or a bad key stops the start
 * with the problem named, never the first pull.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { regexSource } from './config-lifecycle.js';
import { isInlinePem, parseTrustedKey } from './verify/keys.js';

const policySchema = z
  .object({
    /** `enforce`: unverified manifests are refused (403 DENIED); `warn`: served, logged and counted; `off`: not checked. */
    mode: z.enum(['enforce', 'warn', 'off']).default('off'),
    /** Upstream repositories (e.g. `myorg/app`, `library/nginx`) the policy covers; default: every one of the rule. */
    repositories: regexSource.optional(),
    /** Public keys (PEM `PUBLIC KEY`: ECDSA P-256/P-384/P-521, Ed25519, RSA ≥ 2048 bits), inline or a file path. */
    keys: z.array(z.string().min(1)).max(32).default([]),
  })
  .strict()
  .refine((p) => p.mode === 'off' || p.keys.length > 0, { message: 'a policy in mode enforce or warn needs at least one key', path: ['keys'] });

/** A signature policy as configured (after loading: `keys` hold PEM text, files read). */
export type VerifyPolicyConfig = z.output<typeof policySchema>;

/** `verify`: one policy or a list; always a list after parsing (empty: no policy). */
export const verifySchema = z
  .union([policySchema, z.array(policySchema).max(16)])
  .optional()
  .transform((v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]));

/** A problem with a key, at its config path. */
export interface KeyIssue {
  path: PropertyKey[];
  message: string;
}

/**
 * Reads the keys of every rule's `verify` policies from the raw config input (so problems are found even when other
 * parts of the config are invalid): a key that is a file path is read (relative paths from `baseDir`), and every key
 * must parse. Returns the problems, and the PEM text of each key source that loaded.
 */
export function loadPolicyKeys(input: unknown, baseDir: string): { issues: KeyIssue[]; pemOf: Map<string, string> } {
  const issues: KeyIssue[] = [];
  const pemOf = new Map<string, string>();
  const rules = (input as { rules?: unknown } | null)?.rules;
  (Array.isArray(rules) ? rules : []).forEach((rule: { prefix?: unknown; verify?: unknown } | null, i) => {
    const verify = rule?.verify;
    const policies = Array.isArray(verify) ? verify : verify ? [verify] : [];
    policies.forEach((policy: { keys?: unknown } | null, j) => {
      const keys = Array.isArray(policy?.keys) ? policy.keys : [];
      keys.forEach((source: unknown, k) => {
        if (typeof source !== 'string' || source.length === 0) return; // the schema reports it
        const path = ['rules', i, 'verify', ...(Array.isArray(verify) ? [j] : []), 'keys', k];
        const problem = (message: string) => issues.push({ path, message: `rule ${String(rule?.prefix)}: ${message}` });
        let pem = source;
        if (!isInlinePem(source)) {
          const file = isAbsolute(source) ? source : resolve(baseDir, source);
          try {
            pem = readFileSync(file, 'utf8');
          } catch (err) {
            return problem(`cannot read the key file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
          }
        }
        try {
          parseTrustedKey(pem);
          pemOf.set(source, pem);
        } catch (err) {
          problem(`${isInlinePem(source) ? 'an inline key' : source} is ${(err as Error).message}`);
        }
      });
    });
  });
  return { issues, pemOf };
}
