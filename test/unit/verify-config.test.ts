/** The `verify` section of a rule (shared/config-verify.ts): shapes, key files, and problems named at load time. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../shared/config.js';
import { policyFor } from '../../shared/verify/policy.js';
import { generateSigningKey } from '../support/cosign-signatures.js';

const dir = mkdtempSync(join(tmpdir(), 'pt-verify-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const upstream = 'https://ghcr.io';

describe('rules[].verify', () => {
  it('is off when absent; one policy or a list of them, keys inline or from files next to the config file', () => {
    const key = generateSigningKey('p256');
    const other = generateSigningKey('ed25519');
    writeFileSync(join(dir, 'cosign.pub'), other.publicPem);
    writeFileSync(join(dir, 'config.yml'), [
      'rules:',
      '  - prefix: plain',
      `    upstream: ${upstream}`,
      '  - prefix: ghcr',
      `    upstream: ${upstream}`,
      '    verify:',
      '      - mode: enforce',
      "        repositories: '^myorg/'",
      '        keys:',
      '          - ./cosign.pub',
      '          - |',
      ...key.publicPem.trim().split('\n').map((l) => `            ${l}`),
      '      - mode: warn',
      '        keys: [cosign.pub]',
    ].join('\n'));
    const config = loadConfig(join(dir, 'config.yml'));
    const [plain, ghcr] = config.rules;
    expect(plain.verify).toEqual([]);
    expect(policyFor(plain, 'myorg/app')).toBeUndefined();
    expect(ghcr.verify.map((p) => [p.mode, p.repositories, p.keys.length])).toEqual([['enforce', '^myorg/', 2], ['warn', undefined, 1]]);
    expect(ghcr.verify[0].keys[0]).toBe(other.publicPem);
    const mine = policyFor(ghcr, 'myorg/app')!;
    const theirs = policyFor(ghcr, 'vendor/app')!;
    expect([mine.mode, mine.keys.map((k) => k.kind)]).toEqual(['enforce', ['ed25519', 'ecdsa-p256']]);
    expect([theirs.mode, theirs.keys.map((k) => k.kind)]).toEqual(['warn', ['ed25519']]);
    expect(theirs.keySet).not.toBe(mine.keySet);
    // A single policy object is a list of one; `off` checks nothing.
    const single = parseConfig({ rules: [{ prefix: 'p', upstream, verify: { mode: 'off' } }] });
    expect(single.rules[0].verify).toEqual([{ mode: 'off', keys: [] }]);
    expect(policyFor(single.rules[0], 'any/thing')).toBeUndefined();
  });

  it('lists every problem at once: no key, a missing file, a bad key, a bad pattern, an unknown mode', () => {
    writeFileSync(join(dir, 'not-a-key.pem'), '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n');
    const problems = (() => {
      try {
        parseConfig({ rules: [
          { prefix: 'a', upstream, verify: { mode: 'enforce' } },
          { prefix: 'b', upstream, verify: { mode: 'warn', keys: ['missing.pub', 'not-a-key.pem'] } },
        ] }, {}, dir);
        return '';
      } catch (err) {
        return (err as Error).message;
      }
    })();
    expect(problems).toContain('a policy in mode enforce or warn needs at least one key\n  → at rules[0].verify.keys');
    expect(problems).toContain(`rule b: cannot read the key file ${join(dir, 'missing.pub')}: ENOENT\n  → at rules[1].verify.keys[0]`);
    expect(problems).toContain('rule b: not-a-key.pem is not a PEM public key');
    expect(() => parseConfig({ rules: [{ prefix: 'c', upstream, verify: { mode: 'enforce', repositories: '(', keys: [generateSigningKey().publicPem] } }] })).toThrow(/not a valid regular expression/);
    expect(() => parseConfig({ rules: [{ prefix: 'd', upstream, verify: { mode: 'strict', keys: [] } }] })).toThrow(/verify/);
    const ec = generateSigningKey('p256');
    const priv = ec.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    expect(() => parseConfig({ rules: [{ prefix: 'e', upstream, verify: { mode: 'enforce', keys: [priv] } }] })).toThrow(/rule e: an inline key is a private key was given/);
  });
});
