/**
 * The CLI as a whole (`bin/pullthrough.ts`, commander): `--help` lists every subcommand file of bin/commands/ on
 * one line each; `refresh` and `serve` are the same code as `npm run refresh` and `npm start`, on the same
 * `PULLTHROUGH_*` settings. (hash-password, generate-token-key: auth-cli.test.ts; login-password: auth-iam.test.ts.)
 * Commands run in this process (test/support/cli.ts: a Node + tsx start costs seconds on a loaded machine);
 * `serve` runs as its own process, since what it proves (a signal stops it cleanly) needs one.
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { trackChild } from '../support/child-processes.js';
import { runCliInProcess } from '../support/cli.js';
import { scratchDir } from '../support/scratch.js';
import { pickFreePort } from '../support/upstream-registry.js';

const ROOT = resolve(import.meta.dirname, '../..');
const cli = (args: string[], env: Record<string, string> = {}) => runCliInProcess(args, { env });

describe('pullthrough CLI', () => {
  it('a reader that goes away (`| head -1`) ends the output quietly: exit 0, no EPIPE stack trace', async () => {
    const tracked = trackChild(spawn(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', '--help'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    tracked.child.stdout!.destroy(); // the reader is gone before the first write
    let stderr = '';
    tracked.child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const { code } = await tracked.exited;
    expect(stderr).not.toMatch(/EPIPE|Error/);
    expect(code).toBe(0);
  });

  it('--help lists every command file of bin/commands/, each on one line with its description', async () => {
    const r = await cli(['--help']);
    expect(r.status, r.stderr).toBe(0);
    const names = readdirSync(join(ROOT, 'bin/commands')).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3));
    expect(names).toEqual(expect.arrayContaining(['serve', 'refresh', 'hash-password', 'generate-token-key', 'login-password']));
    const lines = r.stdout.slice(r.stdout.indexOf('commands:')).split('\n').slice(1).filter((l) => l.trim() !== '');
    for (const name of names) {
      const line = lines.filter((l) => l.trimStart().startsWith(`${name} `));
      expect(line, name).toHaveLength(1);
      // The name, its arguments, then a description of a few words on the same line.
      expect(line[0]).toMatch(new RegExp(`^  ${name}( \\S+)*\\s{2,}\\S+ \\S+ \\S+`));
    }
    expect(lines.every((l) => /^ {2}\S/.test(l)), 'no wrapped continuation lines').toBe(true);
  });

  it('refresh: one pass over an empty store reports 0 checks; a named target with no cached tag exits 1', async () => {
    const env = { PULLTHROUGH_DATA_DIR: scratchDir('cli-refresh-') };
    const all = await cli(['refresh'], env);
    expect(all.status, all.stderr).toBe(0);
    expect(JSON.parse(all.stdout.trim().split('\n').at(-1)!)).toMatchObject({ checked: 0, moved: 0, errors: 0, stoppedEarly: false });
    const named = await cli(['refresh', 'docker-hub/library/alpine:3.20'], env);
    expect(named.status).toBe(1);
    expect(named.stderr).toContain('no cached tag matches docker-hub/library/alpine:3.20');
    const bad = await cli(['refresh', '--max-seconds', 'soon'], env);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('usage: pullthrough refresh');
  });

  it('serve --port starts the local server on the PULLTHROUGH_* settings; SIGTERM stops it cleanly', async () => {
    const port = await pickFreePort();
    const tracked = trackChild(spawn(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', 'serve', '--port', String(port)], {
      cwd: ROOT, env: { ...process.env, PULLTHROUGH_DATA_DIR: scratchDir('cli-serve-'), PULLTHROUGH_LOG_LEVEL: 'WARN' }, stdio: 'ignore',
    }));
    try {
      let res: Response | undefined;
      for (let i = 0; i < 200 && !res; i++) {
        res = await fetch(`http://127.0.0.1:${port}/v2/`).catch(() => undefined);
        if (!res) await new Promise((r) => setTimeout(r, 100));
      }
      expect(res?.status).toBe(200);
      expect(res?.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
    } finally {
      expect(await tracked.stop(10_000, 15_000)).toEqual({ code: 0, signal: null });
    }
  });
});
