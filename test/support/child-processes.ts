/**
 * Child processes of the test support code: long-lived services (docker-registry, DynamoDB Local, s3rver,
 * containerd) started by {@link spawnTracked}, and one-shot CLI runs (skopeo, podman, ctr) by {@link runCommand}.
 *
 * A tracked child runs under `setpriv --pdeathsig KILL` when util-linux's setpriv is present (it execs, so the
 * child's PID is the service's own), so it dies with the thread that spawned it even when vitest kills its
 * worker without running exit handlers; and it is SIGKILLed by a `process.on('exit')` hook if this process
 * exits normally without stopping it.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

/** util-linux setpriv, used for --pdeathsig when present. */
export const SETPRIV_BIN = '/usr/bin/setpriv';

/** Live children, killed synchronously if the test process exits without stopping them. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        if (c.pid) process.kill(c.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

/** How a child ended. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child killed at this process's exit unless it ended before. */
export interface TrackedChild {
  child: ChildProcess;
  /** Resolves once the child exited. */
  exited: Promise<ChildExit>;
  /** How it ended; undefined while it runs. */
  readonly exit: ChildExit | undefined;
  /**
   * SIGTERM, then SIGKILL if it has not exited after `graceMs`; then waits for the exit, at most `killWaitMs`
   * (unbounded when absent). Resolves with how it ended (undefined if it outlived the wait). Idempotent.
   */
  stop(graceMs: number, killWaitMs?: number): Promise<ChildExit | undefined>;
}

/** Tracks `child` until it exits: the exit hook kills it if this process exits first. */
export function trackChild(child: ChildProcess): TrackedChild {
  installExitHook();
  live.add(child);
  let exit: ChildExit | undefined;
  const exited = new Promise<ChildExit>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      live.delete(child);
      resolve(exit);
    });
  });
  child.once('error', () => {
    /* reported through exit / the caller's readiness timeout */
  });
  const settlesWithin = (ms: number) =>
    Promise.race([exited.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), ms).unref())]);
  return {
    child,
    exited,
    get exit() {
      return exit;
    },
    async stop(graceMs, killWaitMs) {
      if (exit) return exit;
      child.kill('SIGTERM');
      if (!(await settlesWithin(graceMs)) && !exit) {
        child.kill('SIGKILL');
        if (killWaitMs === undefined) await exited;
        else await settlesWithin(killWaitMs);
      }
      return exit;
    },
  };
}

/** `[bin, args]` wrapped as `setpriv --pdeathsig KILL -- bin args` when setpriv is present. */
export function withPdeathsig(bin: string, args: string[]): [string, string[]] {
  return existsSync(SETPRIV_BIN) ? [SETPRIV_BIN, ['--pdeathsig', 'KILL', '--', bin, ...args]] : [bin, args];
}

/** Spawns `bin args` under `setpriv --pdeathsig KILL` (when present) and tracks it ({@link trackChild}). */
export function spawnTracked(bin: string, args: string[], options: SpawnOptions): TrackedChild {
  const [cmd, argv] = withPdeathsig(bin, args);
  return trackChild(spawn(cmd, argv, options));
}

/**
 * `start()`, retried up to `attempts` times in all while it throws (e.g. a lost race for a port picked before
 * the service binds it); throws the last error.
 */
export async function startWithRetries<T>(attempts: number, start: () => Promise<T>): Promise<T> {
  let lastErr: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await start();
    } catch (e) {
      lastErr = e;
    }
  }
  throw lastErr;
}

/** The last `chars` characters of a log file ('' when it cannot be read). */
export function logTail(path: string, chars = 2000): string {
  try {
    return readFileSync(path, 'utf8').slice(-chars);
  } catch {
    return '';
  }
}

/** Result of one {@link runCommand}. `code` is null when killed by the timeout (then `timedOut` is true). */
export interface CommandResult {
  stdout: string;
  stderr: string;
  code: number | null;
  timedOut: boolean;
  /** the argv after the binary, for error messages */
  args: string[];
}

/** Runs `bin args` with exactly `env` (stdin closed), killing it (SIGKILL) after `timeoutMs`; never rejects on a non-zero exit. */
export function runCommand(bin: string, args: string[], opts: { env: NodeJS.ProcessEnv; timeoutMs: number }): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), code, timedOut, args });
    });
  });
}

/** Throws with the command's stderr (naming it `name`) unless the run succeeded; returns it otherwise. */
export function assertCommandOk<R extends CommandResult>(name: string, r: R): R {
  if (r.code !== 0) throw new Error(`${name} ${r.args.join(' ')} failed (code ${r.code}${r.timedOut ? ', timed out' : ''}):\n${r.stderr}`);
  return r;
}
