/**
 * Starts the real local server (`node --import tsx bin/server.ts`, what `npm start` runs) as a child process
 * on a free loopback port, with its own data dir and config, and stops it by PID with SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { scratchDir } from './scratch.js';
import { pickFreePort } from './upstream-registry.js';

const ROOT = resolve(import.meta.dirname, '../..');

/** A running pullthrough server. */
export interface LocalServer {
  url: string;
  /** `127.0.0.1:PORT`, the form skopeo image references use. */
  host: string;
  port: number;
  pid: number;
  dataDir: string;
  logPath: string;
  /** SIGTERM; resolves with the exit code once the process ended (SIGKILL after 10 s). */
  stop(): Promise<number | null>;
}

/**
 * Starts the server with `config` (the YAML config as an object) and extra environment; `root` runs another checkout
 * of the repository (a baseline in a benchmark; default this one).
 */
export async function startLocalServer(config: unknown, opts: { dataDir?: string; env?: Record<string, string>; port?: number; root?: string } = {}): Promise<LocalServer> {
  const dir = scratchDir('server-');
  const configPath = join(dir, 'config.yaml');
  writeFileSync(configPath, stringify(config));
  const dataDir = opts.dataDir ?? join(dir, 'data');
  const port = opts.port ?? (await pickFreePort());
  const logPath = join(dir, 'server.log');
  const log = createWriteStream(logPath);
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'bin/server.ts'], {
    cwd: opts.root ?? ROOT,
    env: { ...process.env, PULLTHROUGH_CONFIG: configPath, PULLTHROUGH_DATA_DIR: dataDir, PULLTHROUGH_PORT: String(port), ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`pullthrough exited with ${child.exitCode}; see ${logPath}`);
    // 401: the server is up with client auth on (the challenge of an anonymous /v2/).
    const ok = await fetch(`${url}/v2/`).then((r) => r.status === 200 || r.status === 401, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`pullthrough did not start within 20 s; see ${logPath}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    host: `127.0.0.1:${port}`,
    port,
    pid: child.pid!,
    dataDir,
    logPath,
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
