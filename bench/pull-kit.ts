/**
 * What the pull benchmarks (./pull.ts on the embedded store, ./pull-aws.ts on DynamoDB Local + s3rver) share: timed
 * skopeo pulls into a fresh `dir:` verified afterwards (untimed: manifest digest, every blob's size and sha256), the
 * servers they start (tracked, stopped by PID whatever happens), the servers' JSON request logs read per pull
 * (requests, blob GETs, `/_blobs/` bodies, fills with their bytes), a baseline checkout of another commit
 * (`BENCH_BASELINE_REF`: a git worktree sharing this checkout's node_modules), and the round-robin runner: every
 * kind once per round, the order rotating each round, so machine noise hits the kinds alike; medians and ratios to
 * the `direct` kind.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, createReadStream, fstatSync, openSync, readFileSync, readSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { PushedImage } from '../test/support/images.js';
import { startLocalServer, type LocalServer } from '../test/support/local-server.js';
import { scratchDir } from '../test/support/scratch.js';
import { skopeoCopy, skopeoInspect, imageRef } from '../test/support/skopeo.js';
import { bounded, median, ROOT } from './support.js';

const PULL_TIMEOUT_MS = 180_000;
const SERVER_STOP_TIMEOUT_MS = 15_000;

/** Server-side view of one pull through the cache, from its JSON request log. Times in ms, sizes in bytes. */
export interface ServerBreakdown {
  requests: number;
  /** Registry API requests (`/v2/<name>/manifests|blobs/...`), the unit of "reads per request". */
  registryRequests: number;
  /** blob GETs on `/v2/.../blobs/...` (307; on a miss this includes waiting for the fill) */
  blobRedirects: { count: number; ms: number };
  /** GETs of the signed `/_blobs/...` URLs (the bytes themselves, embedded store only) */
  blobBodies: { count: number; ms: number };
  /** `blob filled` lines: upstream download + hash + store (fsync + rename, or S3 upload + record) */
  fills: { count: number; ms: number; bytes: number; mbPerSecond: number[] };
  statuses: Record<string, number>;
}

/** Reads the log lines appended to `path` since `offset`; returns them and the new offset. */
export function readLogFrom(path: string, offset: number): { lines: string[]; offset: number } {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size <= offset) return { lines: [], offset };
    const buf = Buffer.alloc(size - offset);
    readSync(fd, buf, 0, buf.length, offset);
    const text = buf.toString('utf8');
    const end = text.lastIndexOf('\n') + 1; // leave a partial last line for next time
    return { lines: text.slice(0, end).split('\n').filter(Boolean), offset: offset + Buffer.byteLength(text.slice(0, end)) };
  } finally {
    closeSync(fd);
  }
}

/** The {@link ServerBreakdown} of a server's log lines. */
export function breakdown(lines: string[]): ServerBreakdown {
  const b: ServerBreakdown = {
    requests: 0, registryRequests: 0, blobRedirects: { count: 0, ms: 0 }, blobBodies: { count: 0, ms: 0 },
    fills: { count: 0, ms: 0, bytes: 0, mbPerSecond: [] }, statuses: {},
  };
  for (const line of lines) {
    let e: { message?: string; method?: string; path?: string; status?: number; ms?: number; size?: number };
    try {
      e = JSON.parse(line);
    } catch {
      continue;
    }
    const ms = e.ms ?? 0;
    if (e.message === 'blob filled') {
      b.fills.count++;
      b.fills.ms += ms;
      b.fills.bytes += e.size ?? 0;
      if (e.size && ms > 0) b.fills.mbPerSecond.push(Math.round(e.size / 1e3 / ms));
      continue;
    }
    if (e.message !== 'request' || typeof e.path !== 'string') continue;
    b.requests++;
    b.statuses[String(e.status)] = (b.statuses[String(e.status)] ?? 0) + 1;
    if (/^\/v2\/.+\/(manifests|blobs)\//.test(e.path)) b.registryRequests++;
    if (e.path.startsWith('/_blobs/')) {
      b.blobBodies.count++;
      b.blobBodies.ms += ms;
    } else if (e.method === 'GET' && /\/blobs\/sha256:/.test(e.path)) {
      b.blobRedirects.count++;
      b.blobRedirects.ms += ms;
    }
  }
  return b;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return `sha256:${h.digest('hex')}`;
}

/** Throws unless `dir` holds exactly the pushed image: manifest digest, and every blob present with its size and digest. */
async function verifyPull(dir: string, image: PushedImage): Promise<void> {
  const manifest = readFileSync(join(dir, 'manifest.json'));
  const got = `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
  if (got !== image.digest) throw new Error(`pulled manifest digest ${got} != pushed ${image.digest} (${dir})`);
  for (const b of image.blobs) {
    const file = join(dir, b.digest.slice('sha256:'.length));
    const size = statSync(file).size;
    if (size !== b.size) throw new Error(`blob ${b.digest}: ${size} bytes pulled, ${b.size} pushed`);
    const d = await sha256File(file);
    if (d !== b.digest) throw new Error(`blob ${b.digest}: pulled bytes hash to ${d}`);
  }
}

/** One timed skopeo copy into a fresh dir (ms); verified afterwards (untimed), then deleted. */
export async function timedPull(ref: string, image: PushedImage): Promise<number> {
  const dest = join(scratchDir('bench-pull-'), 'image');
  try {
    const t0 = performance.now();
    const r = await skopeoCopy(ref, dest, { timeoutMs: PULL_TIMEOUT_MS });
    const ms = performance.now() - t0;
    if (r.code !== 0) throw new Error(`skopeo copy ${ref} failed (code ${r.code}${r.timedOut ? ', timed out' : ''}):\n${r.stderr}`);
    await bounded('verifying the pull', 60_000, verifyPull(dest, image));
    return ms;
  } finally {
    rmSync(resolve(dest, '..'), { recursive: true, force: true });
  }
}

/** Fixed cost of a skopeo run (process start, https→http fallback, one manifest GET), `n` times (ms). */
export async function skopeoOverhead(registryUrl: string, name: string, tag: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await skopeoInspect(imageRef(registryUrl, name, tag), { raw: true, timeoutMs: 30_000 });
    out.push(performance.now() - t0);
    if (r.code !== 0) throw new Error(`skopeo inspect failed: ${r.stderr}`);
  }
  return out;
}

/** The servers and scratch dirs a benchmark started, stopped and removed by {@link Fleet.cleanup} whatever happens. */
export interface Fleet {
  /** Starts a pullthrough server (another checkout with `root`); its data dir is removed at cleanup. */
  start(config: unknown, opts?: { env?: Record<string, string>; root?: string }): Promise<LocalServer>;
  stop(s: LocalServer): Promise<void>;
  /** A git worktree of `ref` sharing this checkout's node_modules (removed at cleanup). */
  checkout(ref: string): string;
  cleanup(): Promise<void>;
}

/** Creates the fleet; `onCleanup` runs last (stopping what the benchmark started itself). */
export function createFleet(onCleanup: () => Promise<void>): Fleet {
  const servers = new Set<LocalServer>();
  const dirs = new Set<string>();
  const worktrees: string[] = [];
  let aborted = false;
  async function stop(s: LocalServer): Promise<void> {
    try {
      await bounded(`stopping pullthrough (pid ${s.pid})`, SERVER_STOP_TIMEOUT_MS, s.stop());
    } catch (err) {
      console.error(String(err));
      try {
        process.kill(s.pid, 'SIGKILL'); // stop() already SIGKILLs after 10 s; the last resort, by PID
      } catch {
        /* gone */
      }
    } finally {
      servers.delete(s);
    }
  }
  let cleaning: Promise<void> | undefined;
  return {
    async start(config, opts = {}) {
      const dataDir = scratchDir('bench-data-');
      dirs.add(dataDir);
      const once = () => startLocalServer(config, { dataDir, env: opts.env, root: opts.root });
      // Start-up is not measured: one retry is harmless (a free port taken meanwhile).
      const s = await once().catch((err: unknown) => {
        console.error(`pullthrough did not start, retrying once: ${String(err)}`);
        return once();
      });
      servers.add(s);
      if (aborted) {
        await stop(s);
        throw new Error('aborted');
      }
      return s;
    },
    stop,
    checkout(ref) {
      const dir = join(scratchDir('bench-baseline-'), 'checkout');
      execFileSync('git', ['worktree', 'add', '--detach', dir, ref], { cwd: ROOT, stdio: 'ignore' });
      worktrees.push(dir);
      symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
      return dir;
    },
    cleanup() {
      cleaning ??= (async () => {
        aborted = true;
        await Promise.all([...servers].map(stop));
        await onCleanup().catch((e: unknown) => console.error(String(e)));
        for (const d of dirs) rmSync(d, { recursive: true, force: true });
        for (const w of worktrees) {
          try {
            execFileSync('git', ['worktree', 'remove', '--force', w], { cwd: ROOT, stdio: 'ignore' });
          } catch {
            rmSync(w, { recursive: true, force: true });
          }
        }
      })();
      return cleaning;
    },
  };
}

/** One measured pull. */
export interface Sample {
  round: number;
  kind: string;
  /** position in the round (0-based) */
  order: number;
  ms: number;
  server?: ServerBreakdown;
  /** What else a kind measured (e.g. index reads). */
  extra?: Record<string, number>;
}

/** A kind of pull: `run` makes one (timed) and may report the server's view and extra figures. */
export interface PullKind {
  kind: string;
  run(round: number): Promise<{ ms: number; server?: ServerBreakdown; extra?: Record<string, number> }>;
}

/** Runs `rounds` rounds of every kind, the order rotating each round; prints one line per round. */
export async function roundRobin(rounds: number, kinds: PullKind[]): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (let round = 0; round < rounds; round++) {
    const order = kinds.map((_, i) => kinds[(i + round) % kinds.length]);
    const line: string[] = [];
    for (const [pos, k] of order.entries()) {
      const r = await k.run(round);
      samples.push({ round: round + 1, kind: k.kind, order: pos, ms: Math.round(r.ms * 10) / 10, server: r.server, extra: r.extra });
      line.push(`${k.kind} ${Math.round(r.ms)} ms`);
    }
    console.log(`round ${round + 1}/${rounds}: ${line.join(', ')}`);
  }
  return samples;
}

/** Median, min, max and samples (ms) per kind, and each kind's median as a ratio to `direct`'s. */
export function summarize(samples: Sample[], kinds: string[]) {
  const stats = Object.fromEntries(kinds.map((k) => {
    const xs = samples.filter((s) => s.kind === k).map((s) => s.ms);
    return [k, { medianMs: Math.round(median(xs) * 10) / 10, minMs: Math.min(...xs), maxMs: Math.max(...xs), samplesMs: xs }];
  })) as Record<string, { medianMs: number; minMs: number; maxMs: number; samplesMs: number[] }>;
  const ratios = Object.fromEntries(kinds.map((k) => [k, Math.round((stats[k].medianMs / stats.direct.medianMs) * 1000) / 1000]));
  return { stats, ratios };
}

/** Prints the table of {@link summarize}'s figures with the targets (ratio ≤ target) per kind. */
export function printTable(summary: ReturnType<typeof summarize>, targets: Record<string, number>): void {
  const pad = (s: string, n: number) => s.padStart(n);
  console.log('');
  console.log(`${'kind'.padEnd(16)}${pad('median ms', 11)}${pad('min ms', 9)}${pad('max ms', 9)}${pad('× direct', 10)}${pad('target', 9)}  met`);
  for (const [k, s] of Object.entries(summary.stats)) {
    const t = targets[k];
    const met = t === undefined ? '' : summary.ratios[k] <= t ? 'yes' : 'NO';
    console.log(`${k.padEnd(16)}${pad(String(Math.round(s.medianMs)), 11)}${pad(String(Math.round(s.minMs)), 9)}${pad(String(Math.round(s.maxMs)), 9)}${pad(summary.ratios[k].toFixed(3), 10)}${pad(t === undefined ? '' : `≤ ${t.toFixed(1)}×`, 9)}  ${met}`);
  }
}

/** Median of `pick` over the samples of `kind` that have a server breakdown. */
export const serverMedian = (samples: Sample[], kind: string, pick: (b: ServerBreakdown) => number) =>
  median(samples.filter((s) => s.kind === kind && s.server).map((s) => pick(s.server!)));
