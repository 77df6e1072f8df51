/**
 * Metrics overhead benchmark (`npm run bench`, issue 10): what the request accounting costs a warm pull — the
 * request scope, the hit/miss notes, the Prometheus counters (PULLTHROUGH_METRICS_PORT on) and the per-rule stats
 * counters — against the same code with all of it off (`PULLTHROUGH_ACCOUNTING=off`). Two servers of this tree
 * hold the same image warm (≥ 50 MiB, 4 layers, from Debian's docker-registry), one at a time in alternating
 * blocks, and are pulled with skopeo. Measured per pull: wall-clock time, and the server process's CPU time
 * (utime + stime from /proc/<pid>/stat), where accounting costs show. Target: the accounting's medians within 2%
 * of the baseline's. (A different commit as baseline would measure every other change too.)
 *
 * Environment: BENCH_BLOCKS (default 4), BENCH_ROUNDS (warm pulls per block, default 6), BENCH_TIMEOUT_MS (default
 * 900 000).
 * Output: a table and `bench/results/metrics-overhead-<time>.json`. Exit 1 on a failed pull, not on a missed target.
 */
import { readFileSync, rmSync } from 'node:fs';
import { pushLargeImage } from '../test/support/images.js';
import { type LocalServer } from '../test/support/local-server.js';
import { scratchDir } from '../test/support/scratch.js';
import { imageRef, skopeoCopy } from '../test/support/skopeo.js';
import { pickFreePort, startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { createFleet } from './pull-kit.js';
import { cleanupOnSignals, fileStamp, gitState, intEnv, median, runBench, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 6, 1);
const BLOCKS = intEnv('BENCH_BLOCKS', 4, 1);
type Kind = 'baseline' | 'accounting';
const TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 900_000, 10_000);
const TARGET = 1.02;

const CLK_TCK = 100; // Linux USER_HZ
/** CPU time (ms) a process has used: utime + stime of /proc/<pid>/stat. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
}

let upstream: UpstreamRegistry | undefined;
/** The servers this benchmark starts, stopped (and their data dirs removed) at cleanup; the upstream last. */
const fleet = createFleet(async () => {
  await upstream?.stop();
});
const cleanup = () => fleet.cleanup();
cleanupOnSignals(cleanup);

async function main(): Promise<number> {
  upstream = await startUpstreamRegistry();
  const image = await pushLargeImage(upstream.url, 'bench/large', 'v1', { minBytes: 50 * 1024 * 1024, layers: 4 });
  const bytes = image.blobs.reduce((a, b) => a + b.size, 0) + image.manifest.length;
  const config = { rules: [{ prefix: 'local', upstream: upstream.url }] };
  const env = { PULLTHROUGH_LOG_LEVEL: 'INFO' };
  const envOf = async (k: Kind) => (k === 'baseline' ? { ...env, PULLTHROUGH_ACCOUNTING: 'off' } : { ...env, PULLTHROUGH_METRICS_PORT: String(await pickFreePort()) });
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
  // One server at a time (two running side by side skewed each other's CPU times on this machine), in blocks that
  // alternate the kinds; each block fills its cache, pulls once unmeasured, then measures ROUNDS warm pulls.
  const samples: Record<Kind, Array<{ ms: number; cpuMs: number }>> = { baseline: [], accounting: [] };
  for (let block = 0; block < BLOCKS; block++) {
    for (const k of block % 2 ? (['accounting', 'baseline'] as const) : (['baseline', 'accounting'] as const)) {
      const s = await fleet.start(config, { env: await envOf(k) });
      await pull(s);
      await pull(s);
      for (let round = 0; round < ROUNDS; round++) samples[k].push(await pull(s));
      await fleet.stop(s);
    }
  }
  const summary = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, { ms: median(xs.map((x) => x.ms)), cpuMs: median(xs.map((x) => x.cpuMs)) }])) as Record<Kind, { ms: number; cpuMs: number }>;
  // CPU times come in 10 ms ticks: the ratio of the totals resolves better than one of medians.
  const total = (k: Kind) => samples[k].reduce((a, x) => a + x.cpuMs, 0);
  const ratio = { ms: summary.accounting.ms / summary.baseline.ms, cpuMs: total('accounting') / total('baseline') };
  const f = (x: number) => x.toFixed(1).padStart(9);
  console.log(`warm pull of ${(bytes / 2 ** 20).toFixed(1)} MiB, ${BLOCKS} blocks of ${ROUNDS} pulls per kind; baseline: PULLTHROUGH_ACCOUNTING=off`);
  console.log(`kind           wall ms  server CPU ms`);
  for (const k of ['baseline', 'accounting'] as const) console.log(`${k.padEnd(12)} ${f(summary[k].ms)}  ${f(summary[k].cpuMs)}`);
  console.log(`ratio        ${ratio.ms.toFixed(3).padStart(9)}  ${ratio.cpuMs.toFixed(3).padStart(9)} (of the totals)   target <= ${TARGET}: CPU ${ratio.cpuMs <= TARGET ? 'met' : 'MISSED'}, wall ${ratio.ms <= TARGET ? 'met' : 'MISSED'}`);
  const started = new Date();
  writeResults('metrics-overhead', fileStamp(started), { at: started.toISOString(), ...gitState(), blocks: BLOCKS, rounds: ROUNDS, bytes, samples, summary, ratio, target: TARGET });
  return 0;
}

runBench('metrics overhead benchmark', TIMEOUT_MS, main, cleanup);
