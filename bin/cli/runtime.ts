/**
 * The runtime the cache commands (refresh, gc, purge, ls, verify) work on: the same one `npm start` builds
 * (shared/runtime.ts) from the same `PULLTHROUGH_*` settings, so a command run beside the server works on the
 * server's store (SQLite in WAL mode and the blob files are safe to share between processes; DynamoDB + S3
 * with `PULLTHROUGH_BACKEND=aws`).
 */
import type { Runtime } from '../../shared/runtime.js';

/** Exit code of a command whose runtime cannot start (bad config or environment). */
export const CANNOT_START = 2;

/**
 * Runs `fn` with a runtime built for this command from the current `PULLTHROUGH_*` settings and closes it
 * afterwards (not the process-wide one of shared/runtime.ts: a command owns its runtime, so running commands one
 * after another in one process works, as the CLI tests do). A runtime that cannot be built (bad config, missing
 * settings) prints why, without a stack, and exits {@link CANNOT_START}.
 */
export async function withRuntime(command: string, fn: (runtime: Runtime) => Promise<void>): Promise<void> {
  let runtime: Runtime;
  try {
    // Loaded here, not at the top: `--help` and the key/password commands start without the AWS SDK and SQLite.
    const { buildRuntime } = await import('../../shared/runtime.js');
    const { loadSettings } = await import('../../shared/config.js');
    // Every problem of the environment and the config at once (StartupError), as getRuntime reports them.
    const { env, config } = loadSettings();
    runtime = await buildRuntime(env, config);
  } catch (err) {
    process.stderr.write(`${command}: cannot start: ${(err as Error).message}\n`);
    process.exitCode = CANNOT_START;
    return;
  }
  try {
    await fn(runtime);
  } finally {
    // What the command counted (a prefetch's upstream traffic) goes to the stats counters first.
    await runtime.stats.close();
    runtime.close();
  }
}

/** A `--max-seconds` value: a positive number. */
export function positiveSeconds(value: string): number {
  const n = Number(value);
  if (!(n > 0)) throw new Error('must be a positive number of seconds');
  return n;
}
