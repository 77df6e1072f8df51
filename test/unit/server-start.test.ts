/**
 * The first minutes of a new user: `npm start` (node --import tsx bin/server.ts, as a child process) with a bad
 * environment, a busy port, a config with several problems, or no SQLite native binding stops with one line
 * `pullthrough: cannot start: …` that says what to do (every problem of the environment and the config at once),
 * exit code 2 (README: a config that cannot start; `pullthrough serve` the same) and no stack trace; listening
 * beyond loopback without client auth logs a warning first.
 */
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../shared/config.js';
import { exposureWarning } from '../../shared/auth/setup.js';
import { runCommand } from '../support/child-processes.js';
import { scratchDir } from '../support/scratch.js';

const ROOT = resolve(import.meta.dirname, '../..');

/**
 * Runs the server with `env` (and `nodeArgs` before the entry point; `entry`: the CLI's `serve` instead of
 * bin/server.ts); it is expected to stop by itself.
 */
async function start(env: Record<string, string>, nodeArgs: string[] = [], entry = ['bin/server.ts']) {
  const dir = scratchDir('start-');
  const r = await runCommand(process.execPath, [...nodeArgs, '--import', 'tsx', join(ROOT, entry[0]), ...entry.slice(1)], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, PULLTHROUGH_DATA_DIR: join(dir, 'data'), ...env },
    timeoutMs: 60_000,
  });
  return { ...r, lines: r.stderr.trim().split('\n').filter(Boolean) };
}

/** The one `cannot start` line, and no stack trace anywhere. */
function expectCannotStart(r: Awaited<ReturnType<typeof start>>, message: RegExp) {
  expect(r.code, r.stderr).toBe(2);
  expect(r.lines.filter((l) => l.startsWith('pullthrough: cannot start: '))).toHaveLength(1);
  expect(r.stderr).toMatch(message);
  expect(r.stderr + r.stdout).not.toMatch(/^\s+at /m);
}

let holder: Server | undefined;
afterEach(async () => {
  await new Promise((r) => (holder ? holder.close(r) : r(undefined)));
  holder = undefined;
});

describe('npm start refuses a bad start with one line', () => {
  it('PULLTHROUGH_PORT=abc', async () => {
    const r = await start({ PULLTHROUGH_PORT: 'abc' });
    expectCannotStart(r, /PULLTHROUGH_PORT must be a port number \(0-65535\), got "abc"/);
    expect(r.lines).toHaveLength(1);
  });

  it('PULLTHROUGH_LOG_LEVEL=LOUD (lower-case levels are fine)', async () => {
    const r = await start({ PULLTHROUGH_LOG_LEVEL: 'LOUD', PULLTHROUGH_PORT: '0' });
    expectCannotStart(r, /PULLTHROUGH_LOG_LEVEL must be one of DEBUG, INFO, WARN, ERROR, SILENT, got "LOUD"/);
    expect(r.lines).toHaveLength(1);
  });

  it('a bad port and a bad log level: both listed', async () => {
    const r = await start({ PULLTHROUGH_PORT: 'abc', PULLTHROUGH_LOG_LEVEL: 'loud' });
    expectCannotStart(r, /PULLTHROUGH_PORT must be a port number \(0-65535\), got "abc"\n✖ PULLTHROUGH_LOG_LEVEL must be one of DEBUG, INFO, WARN, ERROR, SILENT, got "loud"/);
    expect(r.lines).toEqual([
      'pullthrough: cannot start: invalid environment:',
      '✖ PULLTHROUGH_PORT must be a port number (0-65535), got "abc"',
      '✖ PULLTHROUGH_LOG_LEVEL must be one of DEBUG, INFO, WARN, ERROR, SILENT, got "loud"',
    ]);
  });

  it('a typo\'d key, a grace period shorter than twice the URL lifetime and a bad environment: all listed, by serve too', async () => {
    const configPath = join(scratchDir('config-'), 'config.yml');
    writeFileSync(configPath, stringify({ rulez: [], lifecycle: { graceSeconds: 100 } }));
    for (const entry of [['bin/server.ts'], ['bin/pullthrough.ts', 'serve']]) {
      const r = await start({ PULLTHROUGH_CONFIG: configPath, PULLTHROUGH_PORT: '0', PULLTHROUGH_METRICS_PORT: 'm' }, [], entry);
      expectCannotStart(r, /invalid pullthrough config/);
      expect(r.lines).toEqual([
        'pullthrough: cannot start: invalid environment:',
        '✖ PULLTHROUGH_METRICS_PORT must be a port number (0-65535), got "m"',
        'invalid pullthrough config:',
        '✖ Unrecognized key: "rulez"',
        '✖ graceSeconds (100) must be at least twice PULLTHROUGH_URL_TTL_SECONDS (900): 1800 or more',
        '  → at lifecycle.graceSeconds',
      ]);
    }
  });

  it('the metrics port equal to the server port: says they must differ', async () => {
    const r = await start({ PULLTHROUGH_PORT: '5999', PULLTHROUGH_METRICS_PORT: '5999' });
    expectCannotStart(r, /PULLTHROUGH_METRICS_PORT must differ from PULLTHROUGH_PORT \(both 5999\)/);
    expect(r.lines).toHaveLength(1);
  });

  it('a port already in use; on 0.0.0.0 with auth.mode none it warns first', async () => {
    holder = createServer();
    const port = await new Promise<number>((r) => holder!.listen(0, '127.0.0.1', () => r((holder!.address() as { port: number }).port)));
    const local = await start({ PULLTHROUGH_PORT: String(port) });
    expectCannotStart(local, new RegExp(`127\\.0\\.0\\.1:${port} is already in use \\(set PULLTHROUGH_PORT to another port\\)`));
    expect(local.stdout + local.stderr).not.toContain('auth.mode: none');
    // Linux refuses the wildcard bind while 127.0.0.1 holds the port: nothing ever listens beyond loopback here.
    const wide = await start({ PULLTHROUGH_PORT: String(port), PULLTHROUGH_HOST: '0.0.0.0' });
    expectCannotStart(wide, new RegExp(`0\\.0\\.0\\.0:${port} is already in use`));
    const logLines = `${wide.stdout}\n${wide.stderr}`.split('\n').filter((l) => l.startsWith('{'));
    const warning = logLines.map((l) => JSON.parse(l) as { level: string; message: string }).find((l) => l.level === 'WARN');
    expect(warning?.message).toMatch(/^listening on 0\.0\.0\.0 with auth\.mode: none: anyone who can reach this address can pull/);
  });

  it('a config with several problems lists the schema errors and the cross-field problems together', async () => {
    const configPath = join(scratchDir('config-'), 'config.yml');
    writeFileSync(
      configPath,
      stringify({
        defaultRule: 'dockerhub',
        maxManifestBytes: 'big',
        rules: [
          { prefix: 'docker-hub', upstream: 'https://registry-1.docker.io', ttlSeconds: '1h' },
          { prefix: 'docker-hub', upstream: 'https://mirror.example' },
        ],
        auth: { mode: 'token', users: [{ username: 'ci', passwordHash: 'plain', prefixes: ['ghcr'] }] },
      }),
    );
    const r = await start({ PULLTHROUGH_CONFIG: configPath, PULLTHROUGH_PORT: '0' });
    expectCannotStart(r, /invalid pullthrough config/);
    for (const problem of [
      /expected number, received string\n\s+→ at maxManifestBytes/,
      /expected number, received string\n\s+→ at rules\[0\]\.ttlSeconds/,
      /rule prefixes must be unique: "docker-hub" is used twice\n\s+→ at rules\[1\]\.prefix/,
      /defaultRule must be the prefix of a rule: "dockerhub" is none\n\s+→ at defaultRule/,
      /"ghcr" is not a rule prefix \(nor \*\)\n\s+→ at auth\.users\[0\]\.prefixes/,
      /passwordHash is not a valid scrypt hash/,
    ]) {
      expect(r.stderr).toMatch(problem);
    }
  });

  it('no native SQLite binding: says to run npm rebuild better-sqlite3 and which build tools it needs', async () => {
    const r = await start({ PULLTHROUGH_PORT: '0' }, ['--require', join(ROOT, 'test/support/no-sqlite-binding.cjs')]);
    expectCannotStart(r, /has no native binding for Node\.js v\d+.*Run `npm rebuild better-sqlite3`.*python3, make and a C\+\+ compiler/);
    expect(r.lines).toHaveLength(1);
    expect(r.stderr).not.toContain('Tried:');
  });
});

/**
 * Starts `cmd args` serving on a free port in a process group of its own, waits for its "listening" line, sends
 * SIGTERM to the process it started (the one a user knows: `npx`, or node itself) and waits until every writer of
 * its stdout is gone. Resolves with what it printed, how the started process ended, and whether anything of the
 * group still runs (killed then, so a failing test leaves nothing behind).
 */
async function stopWithSigterm(cmd: string, args: string[]) {
  const child = spawn(cmd, args, {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, HOME: process.env.HOME, npm_config_offline: 'true', PULLTHROUGH_DATA_DIR: join(scratchDir('sigterm-'), 'data'), PULLTHROUGH_PORT: '0' },
  });
  let out = '';
  const closed = new Promise<void>((r) => child.stdout.on('close', () => r()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  child.stderr.resume();
  const alive = () => {
    try {
      process.kill(-child.pid!, 0);
      return true;
    } catch {
      return false;
    }
  };
  try {
    await new Promise<void>((ready, fail) => {
      const timer = setTimeout(() => fail(new Error(`not listening after 60 s:\n${out}`)), 60_000);
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString('utf8');
        if (out.includes('"pullthrough listening"')) {
          clearTimeout(timer);
          ready();
        }
      });
    });
    child.kill('SIGTERM');
    const code = await exited;
    // The server's stdout closes when its last process ends (bounded: the server forces its exit after 10 s).
    await Promise.race([closed, new Promise((r) => setTimeout(r, 15_000))]);
    // tsx's esbuild helper (same group) ends when the server closed its pipe: give it a moment, bounded.
    for (let i = 0; i < 50 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
    return { code, out, left: alive() };
  } finally {
    if (alive()) process.kill(-child.pid!, 'SIGKILL');
  }
}

describe('stopping with SIGTERM', () => {
  it('node bin/pullthrough.ts serve stops cleanly and exits 0', async () => {
    const r = await stopWithSigterm(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', 'serve']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/"message":"stopping".*"signal":"SIGTERM"[^\n]*\n.*"message":"stopped"/s);
    expect(r.left).toBe(false);
  }, 90_000);

  it('npx pullthrough serve: SIGTERM to npx stops the server too (npm passes it to its shell only)', async () => {
    const r = await stopWithSigterm('npx', ['pullthrough', 'serve']);
    expect(r.out).toContain('"message":"stopped"');
    expect(r.left).toBe(false);
  }, 90_000);
});

describe('exposureWarning', () => {
  const open = parseConfig({ rules: [{ prefix: 'p', upstream: 'https://r.example' }] });
  const guarded = parseConfig({ rules: [{ prefix: 'p', upstream: 'https://r.example' }], auth: { mode: 'iam', iam: { principals: [] } } });
  it.each(['0.0.0.0', '::', '192.168.1.20', 'cache.internal', '[::]'])('warns for %s with auth.mode none', (host) => {
    expect(exposureWarning(host, open)).toContain(`listening on ${host} with auth.mode: none`);
  });
  it.each(['127.0.0.1', '127.0.0.2', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1'])('is quiet for loopback %s', (host) => {
    expect(exposureWarning(host, open)).toBeUndefined();
  });
  it('is quiet when client auth is on', () => expect(exposureWarning('0.0.0.0', guarded)).toBeUndefined());
});
