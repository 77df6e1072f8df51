/**
 * A private containerd (Debian package, 1.6.x) for e2e tests, and a `ctr` wrapper.
 *
 * {@link startContainerd} writes a config.toml whose root, state, temp dir and gRPC/ttrpc sockets all live in a
 * new scratch dir (./scratch.ts), disables every plugin this sandbox cannot or need not run (CRI, the task
 * runtimes and cgroup monitor — no container is ever run here —, the opt plugin that writes /opt/containerd,
 * tracing, and every snapshotter but `native`, which unpacks layers into plain directories), starts
 * `/usr/bin/containerd --config <it>` under `setpriv --pdeathsig KILL` (so it dies with the test worker) and
 * waits, bounded, until `ctr version` answers. Nothing is written outside the scratch dir.
 *
 * `ctr` runs with an isolated environment (no CONTAINERD_* variables leak in, HOME in the scratch dir) and a
 * timeout per call.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertCommandOk, logTail, runCommand, spawnTracked, type CommandResult } from './child-processes.js';
import { scratchDir, subdir } from './scratch.js';

/** Path of the containerd daemon. */
export const CONTAINERD_BIN = '/usr/bin/containerd';
/** Path of containerd's CLI. */
export const CTR_BIN = '/usr/bin/ctr';

/** Plugins disabled in the generated config (containerd 1.6 plugin IDs). */
export const DISABLED_PLUGINS = [
  'io.containerd.grpc.v1.cri',
  'io.containerd.internal.v1.opt',
  'io.containerd.internal.v1.restart',
  'io.containerd.internal.v1.tracing',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.monitor.v1.cgroups',
  'io.containerd.runtime.v1.linux',
  'io.containerd.runtime.v2.task',
  'io.containerd.service.v1.tasks-service',
  'io.containerd.grpc.v1.tasks',
  'io.containerd.snapshotter.v1.aufs',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.overlayfs',
  'io.containerd.snapshotter.v1.zfs',
] as const;

/** The snapshotter every `ctr` call of these tests should name (`--snapshotter native`). */
export const SNAPSHOTTER = 'native';

/** Result of one ctr run (`args`: the argv after `ctr`). `code` is null when killed by the timeout (then `timedOut` is true). */
export type CtrResult = CommandResult;

/** Options of {@link Containerd.ctr}. */
export interface CtrOptions {
  /** `-n`: containerd namespace; default `pt`. */
  namespace?: string;
  /** Kill (SIGKILL) after this many ms; default 120 000. */
  timeoutMs?: number;
}

/** A running containerd. */
export interface Containerd {
  /** The gRPC unix socket (`ctr --address`). */
  address: string;
  /** Scratch dir holding config, root, state, sockets and the log. */
  dir: string;
  root: string;
  state: string;
  configPath: string;
  /** containerd's stdout+stderr; kept after stop(). */
  logPath: string;
  pid: number;
  /** Runs `ctr --address <sock> -n <ns> <args>`; never rejects on a non-zero exit (see {@link assertCtrOk}). */
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  /** SIGTERM, up to 10 s for exit, then SIGKILL. Resolves with the exit code (null when killed). Idempotent. */
  stop(): Promise<number | null>;
  /** stop(), then delete `dir` unless something is still mounted below it. */
  destroy(): Promise<void>;
}

/** Throws with ctr's stderr unless the run succeeded; returns it otherwise. */
export function assertCtrOk(r: CtrResult): CtrResult {
  return assertCommandOk('ctr', r);
}

/** Runs `ctr args` with `env`, killing it (SIGKILL) after `timeoutMs`. */
const runCtr = (args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<CtrResult> => runCommand(CTR_BIN, args, { env, timeoutMs });

const q = (s: string) => JSON.stringify(s);

function renderConfig(o: { root: string; state: string; temp: string; address: string }): string {
  return [
    'version = 2',
    `root = ${q(o.root)}`,
    `state = ${q(o.state)}`,
    `temp = ${q(o.temp)}`,
    `disabled_plugins = [${DISABLED_PLUGINS.map(q).join(', ')}]`,
    '',
    '[grpc]',
    `  address = ${q(o.address)}`,
    '[ttrpc]',
    `  address = ${q(`${o.address}.ttrpc`)}`,
    '[debug]',
    '  address = ""',
    '[metrics]',
    '  address = ""',
    '',
  ].join('\n');
}

/** True when some mount point lies at or below `dir` (from /proc/self/mountinfo). */
function hasMountsBelow(dir: string): boolean {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((l) => {
        const mountPoint = l.split(' ')[4];
        return mountPoint === dir || mountPoint?.startsWith(`${dir}/`);
      });
  } catch {
    return false;
  }
}

/**
 * Starts containerd as described at the top of this file and resolves once `ctr version` answers (polled every
 * 100 ms, each probe bounded to 2 s, at most `startTimeoutMs`, default 15 000). Throws with the log tail otherwise.
 */
export async function startContainerd(opts: { startTimeoutMs?: number } = {}): Promise<Containerd> {
  for (const bin of [CONTAINERD_BIN, CTR_BIN]) if (!existsSync(bin)) throw new Error(`${bin} not found (apt-get install containerd)`);
  const dir = scratchDir('containerd-');
  const sub = (name: string) => subdir(dir, name);
  const root = sub('root');
  const state = sub('state');
  const temp = sub('tmp');
  const home = sub('home');
  // A unix socket path must fit in 108 bytes; the scratch dir is short (/tmp/pullthrough-test/<pid>/containerd-XXXXXX).
  const address = join(dir, 'containerd.sock');
  if (Buffer.byteLength(address) > 100) throw new Error(`socket path too long for a unix socket: ${address}`);
  const configPath = join(dir, 'config.toml');
  writeFileSync(configPath, renderConfig({ root, state, temp, address }));
  const logPath = join(dir, 'containerd.log');
  const logFd = openSync(logPath, 'a');
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: home, TMPDIR: temp, NO_PROXY: '*' };
  const proc = spawnTracked(CONTAINERD_BIN, ['--config', configPath], { stdio: ['ignore', logFd, logFd], env });
  closeSync(logFd);

  const ctr = (a: string[], o: CtrOptions = {}) =>
    runCtr(['--address', address, '-n', o.namespace ?? 'pt', ...a], env, o.timeoutMs ?? 120_000);

  const stop = async (): Promise<number | null> => (await proc.stop(10_000))!.code;

  const deadline = Date.now() + (opts.startTimeoutMs ?? 15_000);
  let last: CtrResult | undefined;
  while (!proc.exit && Date.now() < deadline) {
    last = await runCtr(['--address', address, 'version'], env, 2_000);
    if (last.code === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (last?.code !== 0) {
    await stop();
    const exited = proc.exit ? ` (exited ${proc.exit.code})` : '';
    throw new Error(`containerd did not answer on ${address}${exited}: ${last?.stderr ?? ''}\nlog tail:\n${logTail(logPath, 3000)}`);
  }

  return {
    address,
    dir,
    root,
    state,
    configPath,
    logPath,
    pid: proc.child.pid!,
    ctr,
    stop,
    async destroy() {
      await stop();
      if (!hasMountsBelow(dir)) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One mirror of a `hosts.toml`. */
export interface HostsMirror {
  /** Base URL, e.g. `http://127.0.0.1:5000`. */
  url: string;
  /** Default `['pull', 'resolve']`. */
  capabilities?: Array<'pull' | 'resolve' | 'push'>;
}

/**
 * Writes `<hostsDir>/<registryHost>/hosts.toml` (containerd's `config_path` / `ctr --hosts-dir` layout; the
 * directory is named exactly `host:port`) declaring `server` and the mirrors, tried in order before the server.
 * Creates `hostsDir` under the scratch dir when not given. Returns the hosts dir.
 */
export function writeHostsToml(registryHost: string, server: string, mirrors: HostsMirror[], hostsDir = scratchDir('hosts-')): string {
  const lines = [`server = ${q(server)}`, ''];
  for (const m of mirrors) {
    lines.push(`[host.${q(m.url)}]`, `  capabilities = [${(m.capabilities ?? ['pull', 'resolve']).map(q).join(', ')}]`, '');
  }
  mkdirSync(join(hostsDir, registryHost), { recursive: true });
  writeFileSync(join(hostsDir, registryHost, 'hosts.toml'), lines.join('\n'));
  return hostsDir;
}

/** A row of `ctr images ls`. */
export interface CtrImage {
  ref: string;
  type: string;
  digest: string;
  platforms: string[];
}

/** The non-blank lines of a `ctr ... ls` table after its header line. */
const tableRows = (stdout: string): string[] =>
  stdout
    .split('\n')
    .slice(1)
    .filter((l) => l.trim() !== '');

/** Parses `ctr images ls` (columns REF TYPE DIGEST SIZE(2 words) PLATFORMS LABELS). */
export function parseImagesList(stdout: string): CtrImage[] {
  return tableRows(stdout).map((l) => {
    const [ref, type, digest, , , platforms] = l.trim().split(/\s+/);
    return { ref, type, digest, platforms: platforms.split(',') };
  });
}

/** A row of `ctr content ls`. */
export interface CtrContent {
  digest: string;
  labels: Record<string, string>;
}

/** Parses `ctr content ls` (tab-separated DIGEST SIZE AGE LABELS; labels `k=v,k=v` or `-`). */
export function parseContentList(stdout: string): CtrContent[] {
  return tableRows(stdout).map((l) => {
    const cols = l.split('\t');
    const labels: Record<string, string> = {};
    const raw = cols[cols.length - 1] ?? '';
    if (raw !== '-') {
      for (const kv of raw.split(',')) {
        const i = kv.indexOf('=');
        if (i > 0) labels[kv.slice(0, i)] = kv.slice(i + 1);
      }
    }
    return { digest: cols[0], labels };
  });
}
