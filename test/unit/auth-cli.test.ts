/**
 * The CLI (`bin/pullthrough.ts`), run as `npm run hash-password` runs it: a password on stdin, its scrypt hash
 * on stdout; and a new token key, alone or in front of the previous key set (rotation). The first case runs the
 * CLI as its own process with a real stdin pipe; the others run it in this process (test/support/cli.ts), since a
 * Node + tsx start per command costs seconds on a loaded machine.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseKeySet } from '../../shared/auth/keys.js';
import { verifyPassword } from '../../shared/auth/passwords.js';
import { runCliInProcess } from '../support/cli.js';

const ROOT = resolve(import.meta.dirname, '../..');
const spawnCli = (args: string[], input = '') =>
  spawnSync(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', ...args], { cwd: ROOT, input, encoding: 'utf8', timeout: 30_000 });
const cli = (args: string[], input = '') => runCliInProcess(args, { input });

describe('pullthrough CLI', () => {
  it('hash-password reads stdin (one trailing newline dropped) and prints a hash that verifies', async () => {
    const r = spawnCli(['hash-password', '--password-stdin'], 's3cret: with spaces\n');
    expect(r.status, r.stderr).toBe(0);
    const hash = r.stdout.trim();
    expect(hash).toMatch(/^scrypt\$32768\$8\$1\$/);
    expect(await verifyPassword('s3cret: with spaces', hash)).toBe(true);
    expect(r.stdout + r.stderr).not.toContain('s3cret');
  });

  it('hash-password refuses an empty password; unknown commands and options exit 2 with the usage', async () => {
    expect((await cli(['hash-password'], '\n')).status).toBe(1);
    const unknown = await cli(['frobnicate']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('usage: pullthrough <command>');
    expect((await cli(['hash-password', '--nope'])).status).toBe(2);
  });

  it('generate-token-key prints a private ES256 JWK; --previous puts it in front of the old set, old keys public only', async () => {
    const first = await cli(['generate-token-key']);
    expect(first.status, first.stderr).toBe(0);
    const key = JSON.parse(first.stdout) as { kid: string; d?: string };
    expect(key).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256' });
    expect(key.d).toBeDefined();
    const file = join(mkdtempSync(join(tmpdir(), 'pt-cli-')), 'old.json');
    writeFileSync(file, first.stdout);
    const rotated = await cli(['generate-token-key', '--previous', file]);
    expect(rotated.status, rotated.stderr).toBe(0);
    const set = JSON.parse(rotated.stdout) as Array<{ kid: string; d?: string }>;
    expect(set).toHaveLength(2);
    expect(set[1].kid).toBe(key.kid);
    expect(set[1].d).toBeUndefined();
    const keys = await parseKeySet(rotated.stdout, 'test');
    expect(keys.signing.kid).toBe(set[0].kid);
    expect([...keys.verifying.keys()]).toEqual([set[0].kid, key.kid]);
  });
});
