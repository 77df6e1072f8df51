/**
 * Temp files of the filesystem blob store (`<root>/tmp/`): every write streams into one before the rename that
 * commits it, so a writer killed mid-write (kill -9, OOM, power loss) leaves a partial file behind. Nothing
 * serves it (it is not at a blob's path), but it holds disk space, so it is removed as soon as its writer is
 * known to be dead: when a store opens (the next server start) and on every GC pass (`pullthrough gc`).
 *
 * A temp file is named after its writer: `<host>.<pid>.<uuid>`, where `<host>` is the host name (anything but
 * letters, digits and `-` as `_`) followed, on Linux, by `_<pid namespace inode>` (`/proc/self/ns/pid`): a
 * container on the host's network takes the host's name but has pids of its own, so the name alone would let a CLI
 * on the host judge a containerised server's pids. Another process's file must not be removed while it is writing
 * (a CLI command opening the store of a running server), so a file is judged by its name:
 * - **this process** (same host and pid): in progress exactly when a write of this process still holds it (all
 *   stores of the process share one list); otherwise it is a leftover of an earlier process that had the same pid
 *   (a container restarted after kill -9 often runs its server as the same pid again);
 * - **another process on this host** (same host name and pid namespace): dead when no process
 *   has that pid any more (`kill(pid, 0)` answers `ESRCH`); a live pid, even one reused by an unrelated process,
 *   keeps the file;
 * - **another host** (a data dir on a network file system or a volume shared with a container of another host
 *   name, whose pids mean nothing here) or a name of an older version: removed only once it has not been written
 *   for {@link STALE_TMP_MS} (a write in progress writes it constantly).
 * Where there is no pid namespace to read (not Linux), two processes that share a data dir and a host name but not
 * their pids would defeat the pid check; give them distinct host names.
 */
import { randomUUID } from 'node:crypto';
import { promises as fs, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';

/** Age (ms) after which a temp file the pid check cannot judge is a crashed write's leftover. */
export const STALE_TMP_MS = 60 * 60 * 1000;

/** This process's pid namespace (the inode in `pid:[4026531836]`), '' where there is none to read. */
function pidNamespace(): string {
  try {
    return /^pid:\[(\d+)\]$/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '';
  } catch {
    return '';
  }
}

/** The writer part of this process's temp file names: host name and pid namespace. */
const HOST = [hostname().replace(/[^A-Za-z0-9-]/g, '_') || 'host', pidNamespace()].filter(Boolean).join('_');
const NAME_RE = /^([A-Za-z0-9_-]+)\.(\d+)\.([0-9a-f-]{36})$/;

/** Temp file names of writes in progress in this process, across all stores it opened. */
const writing = new Set<string>();

/** A new temp file name for a write by this process (`pid` other than this process's: tests), held until {@link releaseTempName}. */
export function newTempName(pid = process.pid): string {
  const name = `${HOST}.${pid}.${randomUUID()}`;
  if (pid === process.pid) writing.add(name);
  return name;
}

/** The write that held `name` ended (committed or failed); its file is removed by the writer itself. */
export function releaseTempName(name: string): void {
  writing.delete(name);
}

/** Whether the writer of temp file `name` is alive, dead, or cannot be judged here (see the file comment). */
export function writerOf(name: string): 'alive' | 'dead' | 'unknown' {
  const m = NAME_RE.exec(name);
  if (!m || m[1] !== HOST) return 'unknown';
  const pid = Number(m[2]);
  if (pid === process.pid) return writing.has(name) ? 'alive' : 'dead';
  if (!Number.isSafeInteger(pid) || pid <= 0) return 'unknown';
  try {
    process.kill(pid, 0); // signal 0: only asks whether the process exists
    return 'alive';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH' ? 'dead' : 'alive'; // EPERM: exists, another user's
  }
}

/**
 * Removes (with `dryRun`: only counts) the temp files in `dir` whose writer is dead, and those that cannot be
 * judged and were last written more than {@link STALE_TMP_MS} before `now` (ms). Returns the files and bytes.
 */
export async function removeAbandonedTemps(dir: string, opts: { dryRun?: boolean; now?: number } = {}): Promise<{ files: number; bytes: number }> {
  const cutoff = (opts.now ?? Date.now()) - STALE_TMP_MS;
  let files = 0;
  let bytes = 0;
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    const writer = writerOf(name);
    if (writer === 'alive') continue;
    const st = await fs.stat(join(dir, name)).catch(() => undefined);
    if (!st?.isFile() || (writer === 'unknown' && st.mtimeMs >= cutoff)) continue;
    if (!opts.dryRun) await fs.rm(join(dir, name), { force: true });
    files++;
    bytes += st.size;
  }
  return { files, bytes };
}
