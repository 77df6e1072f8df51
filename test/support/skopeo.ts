/**
 * Thin wrappers around the real `skopeo` CLI (Debian package, 1.9.x) for
 * pulling through the cache like a container runtime would.
 *
 * Every call runs with an isolated environment: HOME / XDG_RUNTIME_DIR point
 * at a private temp dir (no ~/.docker/config.json or auth.json is read),
 * CONTAINERS_REGISTRIES_CONF is an empty file and --registries.d an empty dir
 * (no mirrors, no search registries), and --insecure-policy skips
 * /etc/containers/policy.json. TLS verification is off, so plain-HTTP
 * registries on 127.0.0.1 work (skopeo tries https first, then falls back to http).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assertCommandOk, runCommand, type CommandResult } from './child-processes.js';
import { scratchDir } from './scratch.js';

/** Path of the skopeo binary. */
export const SKOPEO_BIN = '/usr/bin/skopeo';

/** Result of one skopeo run (`args`: the argv after `skopeo`). `code` is null when killed by the timeout (then `timedOut` is true). */
export type SkopeoResult = CommandResult;

/** Common options. `creds` is `user:password`; `timeoutMs` defaults to 120 000. */
export interface SkopeoCommonOptions {
  /** Select this architecture from a manifest list / image index (global --override-arch). */
  arch?: string;
  /** Select this variant (global --override-variant). */
  variant?: string;
  creds?: string;
  /** Only `false` is meaningful: it is the default anyway (plain HTTP on loopback). */
  tlsVerify?: false;
  timeoutMs?: number;
  /** Extra arguments appended before the image references. */
  extraArgs?: string[];
}

let sandbox: { home: string; registriesConf: string; registriesD: string; tmp: string } | undefined;
function env(): NodeJS.ProcessEnv {
  if (!sandbox) {
    const home = scratchDir('skopeo-home-');
    const registriesConf = join(home, 'registries.conf');
    writeFileSync(registriesConf, 'unqualified-search-registries = []\n');
    const registriesD = join(home, 'registries.d');
    mkdirSync(registriesD);
    const tmp = join(home, 'tmp');
    mkdirSync(tmp);
    mkdirSync(join(home, 'run'));
    sandbox = { home, registriesConf, registriesD, tmp };
  }
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: sandbox.home,
    XDG_RUNTIME_DIR: join(sandbox.home, 'run'),
    XDG_CONFIG_HOME: join(sandbox.home, '.config'),
    CONTAINERS_REGISTRIES_CONF: sandbox.registriesConf,
    REGISTRY_AUTH_FILE: join(sandbox.home, 'auth.json'),
    TMPDIR: sandbox.tmp,
    // No proxies: everything is on 127.0.0.1.
    NO_PROXY: '*',
  };
}

function globalArgs(o: SkopeoCommonOptions): string[] {
  env(); // ensure sandbox exists
  const a = ['--insecure-policy', '--registries.d', sandbox!.registriesD, '--tmpdir', sandbox!.tmp];
  if (o.arch) a.push('--override-arch', o.arch);
  if (o.variant) a.push('--override-variant', o.variant);
  return a;
}

/**
 * Turns `http://127.0.0.1:5000/lib/x:tag`, `127.0.0.1:5000/lib/x:tag` or
 * `docker://...` into a `docker://host:port/name[:tag|@digest]` reference.
 */
export function dockerRef(ref: string): string {
  if (ref.startsWith('docker://')) return ref;
  return 'docker://' + ref.replace(/^https?:\/\//, '');
}

/** Build `host:port/name:tag` (or `@digest`) from a registry URL, for use with the skopeo helpers. */
export function imageRef(registryUrl: string, name: string, tagOrDigest: string): string {
  const host = registryUrl.replace(/^https?:\/\//, '').replace(/\/+$/, '');
  return `${host}/${name}${tagOrDigest.startsWith('sha256:') ? '@' : ':'}${tagOrDigest}`;
}

/** Runs `skopeo <args>` with the sandboxed env, killing it (SIGKILL) after timeoutMs. */
export function runSkopeo(args: string[], timeoutMs = 120_000): Promise<SkopeoResult> {
  return runCommand(SKOPEO_BIN, args, { env: env(), timeoutMs });
}

/** Options for {@link skopeoCopy}. */
export interface SkopeoCopyOptions extends SkopeoCommonOptions {
  /** Copy every instance of a list/index (`--all`); manifest.json is then the list, children are `<hex>.manifest.json`. */
  all?: boolean;
}

/**
 * `skopeo [--override-arch X] copy [--all] --src-tls-verify=false docker://SRC dir:DEST`.
 * With the `dir:` transport, DEST gets `manifest.json` (the exact manifest bytes
 * of the selected image, or of the list with `all`), one file per blob named by
 * its digest hex, and `version`. `src` may be `host:port/name:tag`, `http://...` or `docker://...`.
 */
export function skopeoCopy(src: string, destDir: string, opts: SkopeoCopyOptions = {}): Promise<SkopeoResult> {
  const args = [...globalArgs(opts), 'copy', '--retry-times', '0', '--src-tls-verify=false'];
  if (opts.all) args.push('--all');
  args.push(...(opts.creds ? ['--src-creds', opts.creds] : ['--src-no-creds']));
  args.push(...(opts.extraArgs ?? []), dockerRef(src), `dir:${destDir}`);
  return runSkopeo(args, opts.timeoutMs);
}

/** Options for {@link skopeoInspect}. */
export interface SkopeoInspectOptions extends SkopeoCommonOptions {
  /** `--raw`: stdout is the manifest bytes as served (a list stays a list). */
  raw?: boolean;
  /** `--config`: stdout is the image config. */
  config?: boolean;
}

/** `skopeo [--override-arch X] inspect [--raw] --tls-verify=false docker://REF`. Without `raw`, stdout is skopeo's JSON summary. */
export function skopeoInspect(ref: string, opts: SkopeoInspectOptions = {}): Promise<SkopeoResult> {
  const args = [...globalArgs(opts), 'inspect', '--retry-times', '0', '--tls-verify=false'];
  if (opts.raw) args.push('--raw');
  if (opts.config) args.push('--config');
  args.push(...(opts.creds ? ['--creds', opts.creds] : ['--no-creds']));
  args.push(...(opts.extraArgs ?? []), dockerRef(ref));
  return runSkopeo(args, opts.timeoutMs);
}

/** `skopeo list-tags --tls-verify=false docker://HOST/NAME`; `tags` is parsed from stdout on success. */
export async function skopeoListTags(
  ref: string,
  opts: Omit<SkopeoCommonOptions, 'arch' | 'variant'> = {},
): Promise<SkopeoResult & { tags?: string[] }> {
  const args = [...globalArgs(opts), 'list-tags', '--retry-times', '0', '--tls-verify=false'];
  args.push(...(opts.creds ? ['--creds', opts.creds] : ['--no-creds']));
  args.push(...(opts.extraArgs ?? []), dockerRef(ref));
  const r = await runSkopeo(args, opts.timeoutMs);
  let tags: string[] | undefined;
  if (r.code === 0) {
    try {
      tags = (JSON.parse(r.stdout) as { Tags?: string[] }).Tags ?? [];
    } catch {
      /* leave undefined */
    }
  }
  return { ...r, tags };
}

/** Throws with skopeo's stderr unless the run succeeded; returns it otherwise. */
export function assertSkopeoOk(r: SkopeoResult): SkopeoResult {
  return assertCommandOk('skopeo', r);
}
