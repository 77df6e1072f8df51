/**
 * Per-process scratch space for the test support code.
 *
 * Everything lives under `<os.tmpdir()>/pullthrough-test/<pid>/`. Vitest's
 * fork workers are killed without running `process.on('exit')` handlers, so
 * cleanup at exit is best effort only; instead, the first call in each
 * process removes the directories of PIDs that are no longer alive.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** `<os.tmpdir()>/pullthrough-test` */
export const SCRATCH_ROOT = join(tmpdir(), 'pullthrough-test');

let mine: string | undefined;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** This process's scratch dir (created on first use, after pruning dead processes' dirs). */
export function processScratchDir(): string {
  if (mine) return mine;
  mkdirSync(SCRATCH_ROOT, { recursive: true });
  for (const d of readdirSync(SCRATCH_ROOT)) {
    const pid = Number(d);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !alive(pid)) {
      rmSync(join(SCRATCH_ROOT, d), { recursive: true, force: true });
    }
  }
  const dir = join(SCRATCH_ROOT, String(process.pid));
  mkdirSync(dir, { recursive: true });
  mine = dir;
  process.on('exit', () => {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  });
  return dir;
}

/** Creates `<dir>/<name>` (and any missing parents); returns its path. */
export function subdir(dir: string, name: string): string {
  const p = join(dir, name);
  mkdirSync(p, { recursive: true });
  return p;
}

/** A new unique directory `<processScratchDir>/<prefix>XXXXXX`. */
export function scratchDir(prefix: string): string {
  return mkdtempSync(join(processScratchDir(), prefix));
}
