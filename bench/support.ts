/**
 * What the benchmarks (./pull.ts, ./refresh.ts) share: integer settings from the environment, bounded waits,
 * the commit measured, medians, the results directory, and cleanup on SIGINT/SIGTERM.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** The repository root. */
export const ROOT = resolve(import.meta.dirname, '..');
/** Where the JSON results go: `bench/results/`. */
export const RESULTS_DIR = join(ROOT, 'bench', 'results');

/** The integer in environment variable `name` (`dflt` when unset or empty); throws unless it is >= `min`. */
export function intEnv(name: string, dflt: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}

/** Rejects after `ms` with a message naming `what`. */
export async function bounded<T>(what: string, ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The commit measured, and whether the server's sources (bin, functions, shared) differ from it. */
export function gitState(): { commit?: string; serverSourcesDirty?: boolean } {
  try {
    const git = (...args: string[]) => execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', timeout: 10_000 }).trim();
    return { commit: git('rev-parse', 'HEAD'), serverSourcesDirty: git('status', '--porcelain', '--', 'bin', 'functions', 'shared') !== '' };
  } catch {
    return {};
  }
}

/** The line that says which sources were measured. */
export function describeSources(git: ReturnType<typeof gitState>): string {
  return `server sources: ${git.commit?.slice(0, 12) ?? 'unknown commit'}${git.serverSourcesDirty ? ' + uncommitted changes in bin/functions/shared' : ''}`;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `startedAt` as a file-name stamp: ISO time to the second, `:` replaced by `-`. */
export const fileStamp = (startedAt: Date) => startedAt.toISOString().replace(/\.\d{3}Z$/, 'Z').replace(/:/g, '-');

/** Writes `result` as `bench/results/<name>-<stamp>.json` and prints its path. */
export function writeResults(name: string, stamp: string, result: unknown): void {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const out = join(RESULTS_DIR, `${name}-${stamp}.json`);
  writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  console.log(`\nresults: ${out.slice(ROOT.length + 1)}`);
}

/** On SIGINT or SIGTERM: runs `cleanup` (bounded to 30 s), then exits with 130. */
export function cleanupOnSignals(cleanup: () => Promise<void>): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      console.error(`\n${sig}: cleaning up`);
      void bounded('cleanup', 30_000, cleanup())
        .catch((e: unknown) => console.error(String(e)))
        .finally(() => process.exit(130));
    });
  }
}

/**
 * Runs a benchmark's `main` bounded to `ms`, then `cleanup`, and exits with main's code (1 when it threw, after
 * printing the error).
 */
export function runBench(what: string, ms: number, main: () => Promise<number>, cleanup: () => Promise<void>): void {
  bounded(what, ms, main())
    .then(async (code) => {
      await cleanup();
      process.exit(code);
    })
    .catch(async (err: unknown) => {
      console.error(err instanceof Error ? err.stack : String(err));
      await cleanup();
      process.exit(1);
    });
}
