/**
 * Temp files of writers killed mid-write (kill -9 mid-fill) are removed promptly — at the next store open and by
 * every GC pass, which counts them — while writes in progress stay: another live process's (the running server
 * while a CLI command opens its data dir) and this process's own. Writers are real processes: a child `node`
 * that stays alive, and one killed with SIGKILL (the real server killed mid-fill is the e2e fill-crash test).
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { sha256Digest } from '../../shared/oci/digest.js';
import { openFsBlobStore } from '../../shared/store/fs-blob-store.js';
import { newTempName, releaseTempName, STALE_TMP_MS, writerOf } from '../../shared/store/fs-temp-files.js';
import { trackChild, type TrackedChild } from '../support/child-processes.js';
import { createHarness } from '../support/harness.js';

const children: TrackedChild[] = [];
afterEach(async () => {
  while (children.length) await children.pop()!.stop(0, 5000);
});

/** A live process (a writer that is still running). */
function liveProcess(): TrackedChild {
  const child = trackChild(spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)'], { stdio: 'ignore' }));
  children.push(child);
  return child;
}

/** The pid of a process that was killed with SIGKILL (and reaped). */
async function deadPid(): Promise<number> {
  const child = liveProcess();
  child.child.kill('SIGKILL');
  await child.exited;
  return child.child.pid!;
}

/** Writes a partial temp file named for `name` into `<dir>/tmp/`; returns its path. */
function tempFile(dir: string, name: string, bytes = 1000): string {
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const path = join(dir, 'tmp', name);
  writeFileSync(path, Buffer.alloc(bytes, 1));
  return path;
}

describe('who wrote a temp file', () => {
  it('judges by name: this process’s writes in progress, live and dead pids on this host, anything else unknown', async () => {
    const live = liveProcess();
    const mine = newTempName();
    expect(writerOf(mine)).toBe('alive');
    releaseTempName(mine);
    expect(writerOf(mine)).toBe('dead'); // an earlier process with this pid (a restarted container) left it
    expect(writerOf(newTempName(live.child.pid))).toBe('alive');
    expect(writerOf(newTempName(await deadPid()))).toBe('dead');
    expect(writerOf(`other-host.${live.child.pid}.${randomUUID()}`)).toBe('unknown');
    if (process.platform === 'linux') {
      // The writer is the host name and the pid namespace: a process of another pid namespace with the same host name
      // (a container on the host's network) is not judged by pid here.
      const host = hostname().replace(/[^A-Za-z0-9-]/g, '_');
      const namespace = /\d+/.exec(readlinkSync('/proc/self/ns/pid'))![0];
      expect(newTempName(live.child.pid).split('.')[0]).toBe(`${host}_${namespace}`);
      expect(writerOf(`${host}_1.${await deadPid()}.${randomUUID()}`)).toBe('unknown');
      expect(writerOf(`${host}.${await deadPid()}.${randomUUID()}`)).toBe('unknown');
    }
    expect(writerOf(randomUUID())).toBe('unknown'); // a name from before writers were named
  });
});

describe('temp files of dead writers', () => {
  it('are removed when the store opens; a live writer’s stay, and one that cannot be judged stays for an hour', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pt-tmp-files-'));
    const live = liveProcess();
    const dead = tempFile(dir, newTempName(await deadPid()));
    const running = tempFile(dir, newTempName(live.child.pid));
    const foreign = tempFile(dir, `other-host.1.${randomUUID()}`);
    const foreignOld = tempFile(dir, `other-host.1.${randomUUID()}`);
    const old = (Date.now() - STALE_TMP_MS - 60_000) / 1000;
    utimesSync(foreignOld, old, old);

    await openFsBlobStore(dir);
    expect([dead, running, foreign, foreignOld].map(existsSync)).toEqual([false, true, true, false]);
  });

  it('are removed and counted by every GC pass (dry run: counted only); writes in progress are not touched', async () => {
    const h = await createHarness([{ prefix: 'p', upstream: 'http://127.0.0.1:9' }]);
    try {
      const live = liveProcess();
      const running = tempFile(h.dir, newTempName(live.child.pid), 3000);
      const deadWriter = tempFile(h.dir, newTempName(await deadPid()), 2000);
      const leftover = newTempName(); // this pid, not held by any write: a previous process's
      releaseTempName(leftover);
      const mine = tempFile(h.dir, leftover, 500);

      // A write of this process in progress (its source has not ended).
      const bytes = Buffer.alloc(70_000, 7);
      const source = new PassThrough();
      const writing = h.blobs.write(sha256Digest(bytes), source, bytes.length);
      source.write(bytes.subarray(0, 1000));
      const inProgress = () => readdirSync(join(h.dir, 'tmp')).filter((f: string) => ![running, deadWriter, mine].some((p) => p.endsWith(f)));
      for (let i = 0; i < 100 && inProgress().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(inProgress()).toHaveLength(1);

      const dry = await h.lifecycle.gc({ dryRun: true });
      expect(dry).toMatchObject({ removedTempFiles: 2, removedTempBytes: 2500 });
      expect([running, deadWriter, mine].map(existsSync)).toEqual([true, true, true]);

      const report = await h.lifecycle.gc();
      expect(report).toMatchObject({ removedTempFiles: 2, removedTempBytes: 2500 });
      expect([running, deadWriter, mine].map(existsSync)).toEqual([true, false, false]);
      expect(inProgress()).toHaveLength(1);
      source.end(bytes.subarray(1000));
      expect(await writing).toEqual({ size: bytes.length });
      expect(statSync(h.blobs.pathOf(sha256Digest(bytes))).size).toBe(bytes.length);

      // The live writer dies: the next pass removes its file too.
      live.child.kill('SIGKILL');
      await live.exited;
      expect(await h.lifecycle.gc()).toMatchObject({ removedTempFiles: 1, removedTempBytes: 3000 });
      expect(existsSync(running)).toBe(false);
    } finally {
      h.close();
    }
  });
});
