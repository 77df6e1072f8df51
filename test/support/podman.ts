/**
 * A thin wrapper around the real `podman` CLI (Debian package, 4.3.x) for pulling through the cache the way a
 * container runtime does, as root, without systemd, and without touching the machine's own podman state.
 *
 * Every {@link createPodmanSandbox} call gets its own storage and state under the per-process scratch dir
 * (./scratch.ts): `--root`, `--runroot`, `--tmpdir` (libpod state; default /run/libpod), `--network-config-dir`,
 * the `vfs` storage driver (no overlay mounts), `--cgroup-manager cgroupfs`, `--events-backend none`, and an
 * environment with its own HOME/TMPDIR, a containers.conf (network backend `cni`: rootful netavark always
 * creates /run/containers/networks, CNI keeps its state in --tmpdir), a storage.conf, an empty-ish
 * registries.conf (no search registries, no mirrors, no drop-ins) and an insecureAcceptAnything signature
 * policy passed with `--signature-policy`.
 *
 * One thing stays shared: as root, containers/image keeps its blob-info cache in
 * /var/lib/containers/cache/blob-info-cache-v1.boltdb (skopeo uses it too; podman 4.3 has no option to move it).
 * It only records which digests were seen where, and a fresh storage root never reuses a layer through it.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertCommandOk, runCommand, type CommandResult } from './child-processes.js';
import { scratchDir, subdir } from './scratch.js';

/** Path of the podman binary. */
export const PODMAN_BIN = '/usr/bin/podman';

/**
 * Result of one podman run (`args`: the argv after `podman`, global flags included). `code` is null when killed
 * by the timeout (then `timedOut` is true).
 */
export type PodmanResult = CommandResult;

/** Options of {@link PodmanSandbox.pull}. */
export interface PodmanPullOptions {
  /** `--arch`: the platform picked from an image index / manifest list. */
  arch?: string;
  /** `--variant`. */
  variant?: string;
  /** `--creds user:password`. */
  creds?: string;
  /** Kill (SIGKILL) after this many ms; default 120 000. */
  timeoutMs?: number;
}

/** The parts of `podman image inspect` output the tests read. */
export interface PodmanImage {
  /** Image ID: the hex of the image's config digest. */
  Id: string;
  /** The manifest digest podman records for the image (for a pull by tag of an index: the index's digest). */
  Digest: string;
  RepoTags: string[];
  /** `repository@digest` for every manifest the image was pulled through. */
  RepoDigests: string[];
  Architecture: string;
  Os: string;
  RootFS: { Type: string; Layers: string[] };
}

/** An isolated podman: its own storage, state and configuration. */
export interface PodmanSandbox {
  /** The sandbox directory (everything below is podman's). */
  dir: string;
  /** `--root` (image storage). */
  root: string;
  /** Runs `podman <global flags> <args>`; never rejects on a non-zero exit (see {@link assertPodmanOk}). */
  run(args: string[], timeoutMs?: number): Promise<PodmanResult>;
  /**
   * `podman pull -q --tls-verify=false --signature-policy <policy> [--arch A] REF` (plain HTTP on loopback).
   * Resolves with the image ID (podman's stdout), throws with podman's stderr on failure.
   */
  pull(ref: string, opts?: PodmanPullOptions): Promise<string>;
  /** `podman image inspect --format json <nameOrId>` → the single image. Throws on failure. */
  inspect(nameOrId: string, timeoutMs?: number): Promise<PodmanImage>;
  /** Deletes the sandbox directory (podman holds no mounts with vfs; nothing runs between calls). Idempotent. */
  remove(): void;
}

const DEFAULT_TIMEOUT_MS = 120_000;

/** Throws with podman's stderr unless the run succeeded; returns it otherwise. */
export function assertPodmanOk(r: PodmanResult): PodmanResult {
  return assertCommandOk('podman', r);
}

/** Creates a new sandbox under the scratch dir. Nothing is started: podman runs only during each call. */
export function createPodmanSandbox(): PodmanSandbox {
  const dir = scratchDir('podman-');
  const d = (name: string) => subdir(dir, name);
  const root = d('root');
  const runroot = d('runroot');
  const tmpdir = d('libpod-tmp');
  const networks = d('networks');
  const home = d('home');
  const tmp = d('tmp');
  const registriesConf = join(dir, 'registries.conf');
  writeFileSync(registriesConf, 'unqualified-search-registries = []\n');
  // podman refuses a REGISTRY_AUTH_FILE that does not exist; an empty one means "no credentials".
  const authFile = join(home, 'auth.json');
  writeFileSync(authFile, JSON.stringify({ auths: {} }));
  const policy = join(dir, 'policy.json');
  writeFileSync(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const containersConf = join(dir, 'containers.conf');
  writeFileSync(
    containersConf,
    [
      '[containers]',
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "none"',
      `image_copy_tmp_dir = ${JSON.stringify(tmp)}`,
      '[network]',
      'network_backend = "cni"',
      `network_config_dir = ${JSON.stringify(networks)}`,
      '',
    ].join('\n'),
  );
  const storageConf = join(dir, 'storage.conf');
  writeFileSync(storageConf, ['[storage]', 'driver = "vfs"', `runroot = ${JSON.stringify(runroot)}`, `graphroot = ${JSON.stringify(root)}`, ''].join('\n'));

  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    XDG_RUNTIME_DIR: d('run'),
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_DATA_HOME: join(home, '.local/share'),
    TMPDIR: tmp,
    CONTAINERS_CONF: containersConf,
    CONTAINERS_STORAGE_CONF: storageConf,
    CONTAINERS_REGISTRIES_CONF: registriesConf,
    REGISTRY_AUTH_FILE: authFile,
    // Everything is on 127.0.0.1.
    NO_PROXY: '*',
  };
  const globalArgs = [
    '--root', root,
    '--runroot', runroot,
    '--storage-driver', 'vfs',
    '--tmpdir', tmpdir,
    '--network-config-dir', networks,
    '--cgroup-manager', 'cgroupfs',
    '--events-backend', 'none',
  ];

  const run = (args: string[], timeoutMs = DEFAULT_TIMEOUT_MS) => runCommand(PODMAN_BIN, [...globalArgs, ...args], { env, timeoutMs });

  return {
    dir,
    root,
    run,
    async pull(ref, opts = {}) {
      const args = ['pull', '-q', '--tls-verify=false', '--signature-policy', policy];
      if (opts.arch) args.push('--arch', opts.arch);
      if (opts.variant) args.push('--variant', opts.variant);
      if (opts.creds) args.push('--creds', opts.creds);
      const r = assertPodmanOk(await run([...args, ref.replace(/^(docker:\/\/|https?:\/\/)/, '')], opts.timeoutMs));
      return r.stdout.trim().split('\n').pop()!.trim();
    },
    async inspect(nameOrId, timeoutMs = 30_000) {
      const r = assertPodmanOk(await run(['image', 'inspect', '--format', 'json', nameOrId], timeoutMs));
      const images = JSON.parse(r.stdout) as PodmanImage[];
      if (images.length !== 1) throw new Error(`podman image inspect ${nameOrId}: ${images.length} images`);
      return images[0];
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
