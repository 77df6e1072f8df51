/**
 * Metrics overhead benchmark (`npm run bench`, issue 10): what the request accounting costs a warm pull — the
 * request scope, the hit/miss notes, the Prometheus counters (PULLTHROUGH_METRICS_PORT on) and the per-rule stats
 * counters — against a baseline checkout of the code without any of it (`BENCH_BASELINE_REF`, default the commit
 * before it landed), as a git worktree sharing this checkout's node_modules. Both servers hold the same image warm
 * (≥ 50 MiB, 4 layers, from Debian's docker-registry) and are pulled alternately with skopeo, the order swapped
 * every round. Measured per pull: wall-clock time, and the server process's CPU time (utime + stime from
 * /proc/<pid>/stat), which is where accounting costs show. Target: the medians within 2% of the baseline's.
 *
 * Environment: BENCH_ROUNDS (default 10), BENCH_BASELINE_REF (default f431506), BENCH_TIMEOUT_MS (default 900 000).
 * Output: a table and `bench/results/metrics-overhead-<time>.json`. Exit 1 on a failed pull, not on a missed target.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { pushLargeImage } from '../test/support/images.js';
import { startLocalServer, type LocalServer } from '../test/support/local-server.js';
import { scratchDir } from '../test/support/scratch.js';
import { imageRef, skopeoCopy } from '../test/support/skopeo.js';
import { pickFreePort, startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { bounded, cleanupOnSignals, fileStamp, gitState, intEnv, median, ROOT, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 10, 1);
const TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 900_000, 10_000);
/** The last commit of main before the accounting (request scope, metrics port) landed. */
const BASELINE_REF = process.env.BENCH_BASELINE_REF || 'f431506';
const TARGET = 1.02;

const CLK_TCK = 100; // Linux USER_HZ
/** CPU time (ms) a process has used: utime + stime of /proc/<pid>/stat. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
}

let upstream: UpstreamRegistry | undefined;
const servers: LocalServer[] = [];
let worktree: string | undefined;
async function cleanup(): Promise<void> {
  await Promise.all(servers.map((s) => s.stop().catch(() => undefined)));
  await upstream?.stop().catch(() => undefined);
  if (worktree) {
    try {
      execFileSync('git', ['worktree', 'remove', '--force', worktree], { cwd: ROOT, stdio: 'ignore' });
    } catch {
      rmSync(worktree, { recursive: true, force: true });
    }
  }
}
cleanupOnSignals(cleanup);

async function main(): Promise<number> {
  worktree = join(scratchDir('bench-baseline-'), 'checkout');
  execFileSync('git', ['worktree', 'add', '--detach', worktree, BASELINE_REF], { cwd: ROOT, stdio: 'ignore' });
  symlinkSync(join(ROOT, 'node_modules'), join(worktree, 'node_modules'));
  upstream = await startUpstreamRegistry();
  const image = await pushLargeImage(upstream.url, 'bench/large', 'v1', { minBytes: 50 * 1024 * 1024, layers: 4 });
  const bytes = image.blobs.reduce((a, b) => a + b.size, 0) + image.manifest.length;
  const config = { rules: [{ prefix: 'local', upstream: upstream.url }] };
  const env = { PULLTHROUGH_LOG_LEVEL: 'INFO' };
  const kinds = {
    baseline: await startLocalServer(config, { env, root: worktree }),
    accounting: await startLocalServer(config, { env: { ...env, PULLTHROUGH_METRICS_PORT: String(await pickFreePort()) } }),
  };
  servers.push(...Object.values(kinds));
  const pull = async (s: LocalServer) => {
    const dest = scratchDir('bench-pull-');
    try {
      const cpu0 = cpuMs(s.pid);
      const t0 = performance.now();
      const r = await skopeoCopy(imageRef(s.url, 'local/bench/large', 'v1'), dest, { timeoutMs: 120_000 });
      const ms = performance.now() - t0;
      if (r.code !== 0) throw new Error(`skopeo failed: ${r.stderr}`);
      return { ms, cpuMs: cpuMs(s.pid) - cpu0 };
    } finally {
      rmSync(dest, { recursive: true, force: true });
    }
  };
  // Fill both caches, then one unmeasured warm pull each.
  for (const s of Object.values(kinds)) {
    await pull(s);
    await pull(s);
  }
  const samples: Record<keyof typeof kinds, Array<{ ms: number; cpuMs: number }>> = { baseline: [], accounting: [] };
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 ? (['accounting', 'baseline'] as const) : (['baseline', 'accounting'] as const);
    for (const k of order) samples[k].push(await pull(kinds[k]));
  }
  const summary = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, { ms: median(xs.map((x) => x.ms)), cpuMs: median(xs.map((x) => x.cpuMs)) }])) as Record<keyof typeof kinds, { ms: number; cpuMs: number }>;
  const ratio = { ms: summary.accounting.ms / summary.baseline.ms, cpuMs: summary.accounting.cpuMs / summary.baseline.cpuMs };
  const f = (x: number) => x.toFixed(1).padStart(9);
  console.log(`warm pull of ${(bytes / 2 ** 20).toFixed(1)} MiB, ${ROUNDS} rounds, baseline ${BASELINE_REF}`);
  console.log(`kind           wall ms  server CPU ms`);
  for (const k of ['baseline', 'accounting'] as const) console.log(`${k.padEnd(12)} ${f(summary[k].ms)}  ${f(summary[k].cpuMs)}`);
  console.log(`ratio        ${ratio.ms.toFixed(3).padStart(9)}  ${ratio.cpuMs.toFixed(3).padStart(9)}   target <= ${TARGET}: ${ratio.ms <= TARGET ? 'met' : 'MISSED'} (wall)`);
  const started = new Date();
  writeResults('metrics-overhead', fileStamp(started), { at: started.toISOString(), ...gitState(), baseline: BASELINE_REF, rounds: ROUNDS, bytes, samples, summary, ratio, target: TARGET });
  return 0;
}

bounded('metrics overhead benchmark', TIMEOUT_MS, main())
  .then(async (code) => {
    await cleanup();
    process.exit(code);
  })
  .catch(async (err: unknown) => {
    console.error(err instanceof Error ? err.stack : String(err));
    await cleanup();
    process.exit(1);
  });
