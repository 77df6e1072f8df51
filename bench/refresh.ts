/**
 * Refresh benchmark (`npx tsx bench/refresh.ts`): wall time and memory of one scheduled refresh pass over a
 * synthetic cache of 10,000 tags (100 repositories; 9,000 due, 1,000 not; 50 of the due ones moved upstream),
 * against the counting in-process fake upstream (`test/support/fake-upstream.ts`) over HTTP on loopback, with
 * the registry deps assembled as the unit tests do (`test/support/harness.ts`: SQLite index on disk, WAL).
 *
 * Each round runs, in alternating order:
 *  - refresh:  `refresher.refreshDue()` over the 9,000 due tags (rule `refreshConcurrency` 8): 9,000 HEADs,
 *              50 GETs by digest, one index write per tag;
 *  - baseline: the same 9,000 manifest HEADs sent straight to the fake with fetch at the same concurrency,
 *              no cache (what the upstream round trips alone cost on this machine, in this process).
 * Before each round the index clock moves on by 1 h (every checked tag is due again) and the 50 tags move again
 * upstream, so every round does the same work. An untimed warm-up (a tenth of each pass) comes first. The
 * figure of interest is the ratio refresh/baseline of the same run (the machine is shared; absolute times vary
 * by a factor of 2 or more from run to run).
 *
 * Both kinds send their HEADs with Node's fetch, which (undici) closes the connection after every HEAD, so
 * each HEAD in either kind opens a new loopback TCP connection.
 *
 * Memory: `process.memoryUsage()` sampled every 50 ms during each pass (and at its start and end); the fake
 * runs in the same process, so RSS includes it (its 10,000 manifests are seeded before the first sample).
 * Concurrency: requests the cache's upstream client had sent and not yet had answered (global fetch wrapped),
 * and the fake's own count of requests it was handling at once (with no upstream latency the in-process fake
 * answers each request within one event-loop turn, so its count stays near 1; see BENCH_UPSTREAM_DELAY_MS).
 *
 * Environment:
 *  - BENCH_ROUNDS             rounds (default 3; each round is one refresh pass and one baseline pass)
 *  - BENCH_TAGS               cached tags (default 10000, a multiple of 500; 90 % due, 50 moved)
 *  - BENCH_CONCURRENCY        the rule's refreshConcurrency and the baseline's concurrency (default 8)
 *  - BENCH_UPSTREAM_DELAY_MS  latency the fake adds to every request (default 0)
 *  - BENCH_TIMEOUT_MS         bound on the whole run (default 900000)
 *
 * Output: a table on stdout and the figures as JSON in `bench/results/refresh-<ISO time>.json`. Exit code 0
 * when every pass did what it should (counts, cap), whatever the timings; 1 otherwise.
 */
import { cpus, loadavg } from 'node:os';
import pLimit from 'p-limit';
import { parseConfig } from '../shared/config.js';
import { MANIFEST_ACCEPT, OCI_MANIFEST } from '../shared/oci/media-types.js';
import type { RefreshReport } from '../shared/registry/refresh.js';
import { startFakeUpstream, type FakeUpstream } from '../test/support/fake-upstream.js';
import { createHarness } from '../test/support/harness.js';
import { HOUR, manifestBody, seedTagIndex, synthesizeTags } from '../test/support/refresh-synth.js';
import { bounded, cleanupOnSignals, describeSources, fileStamp, gitState, intEnv, median, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 3, 1);
const TAGS = intEnv('BENCH_TAGS', 10_000, 500);
const CONCURRENCY = intEnv('BENCH_CONCURRENCY', 8, 1);
const DELAY_MS = intEnv('BENCH_UPSTREAM_DELAY_MS', 0, 0);
const TOTAL_TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 900_000, 10_000);

if (TAGS % 500 !== 0) throw new Error(`BENCH_TAGS must be a multiple of 500, got ${TAGS}`);
const REPOS = 100;
const MOVED = 50;
const SAMPLE_MS = 50;
const MB = 1024 * 1024;

const round1 = (x: number) => Math.round(x * 10) / 10;
const round3 = (x: number) => Math.round(x * 1000) / 1000;

// The synthetic cache (test/support/refresh-synth.ts, as test/unit/refresh-scale.test.ts builds it): tag i lives
// in repository i % 100; every 10th tag is not due (due in 30+ days); 50 due tags (every TAGS/50-th) move upstream.
const SYNTH = { tags: TAGS, repos: REPOS, moved: MOVED, notDueInMs: 30 * 24 * HOUR };

// ---------------------------------------------------------------------------------------------------------
// Measuring.

interface MemSample {
  rss: number;
  heapUsed: number;
}

/** Samples memory every 50 ms until stopped; returns the peaks and the samples' count. */
function startSampler() {
  const first = process.memoryUsage();
  let peakRss = first.rss;
  let peakHeap = first.heapUsed;
  let samples = 1;
  const take = () => {
    const m = process.memoryUsage();
    peakRss = Math.max(peakRss, m.rss);
    peakHeap = Math.max(peakHeap, m.heapUsed);
    samples++;
  };
  const timer = setInterval(take, SAMPLE_MS);
  return {
    start: { rss: first.rss, heapUsed: first.heapUsed } satisfies MemSample,
    stop() {
      clearInterval(timer);
      take();
      const end = process.memoryUsage();
      return { peakRss, peakHeap, samples, end: { rss: end.rss, heapUsed: end.heapUsed } satisfies MemSample };
    },
  };
}

/** Wraps global fetch to count requests sent and not yet answered (headers received). */
const clientFlight = { inFlight: 0, max: 0, reset() { this.max = this.inFlight; } };
const realFetch = globalThis.fetch;
globalThis.fetch = (async (input: string | URL | Request, init?: RequestInit) => {
  clientFlight.inFlight++;
  clientFlight.max = Math.max(clientFlight.max, clientFlight.inFlight);
  try {
    return await realFetch(input, init);
  } finally {
    clientFlight.inFlight--;
  }
}) as typeof fetch;

interface Pass {
  round: number;
  kind: 'refresh' | 'baseline';
  /** position in the round (0-based) */
  order: number;
  ms: number;
  requestsPerSecond: number;
  heads: number;
  gets: number;
  maxInFlightClient: number;
  maxInFlightUpstream: number;
  rssStartMB: number;
  peakRssMB: number;
  rssEndMB: number;
  heapStartMB: number;
  peakHeapMB: number;
  memSamples: number;
  report?: RefreshReport;
  problems: string[];
}

const toMB = (b: number) => round1(b / MB);

// ---------------------------------------------------------------------------------------------------------

let up: FakeUpstream | undefined;
let harness: Awaited<ReturnType<typeof createHarness>> | undefined;

async function cleanup(): Promise<void> {
  globalThis.fetch = realFetch;
  try {
    harness?.close();
  } catch (e) {
    console.error(`closing the index: ${String(e)}`);
  }
  harness = undefined;
  await up?.close().catch((e: unknown) => console.error(`stopping the fake upstream: ${String(e)}`));
  up = undefined;
}

cleanupOnSignals(cleanup);

async function main(): Promise<boolean> {
  const startedAt = new Date();
  const stamp = fileStamp(startedAt);
  const git = gitState();
  const load: { start: number[]; end?: number[] } = { start: loadavg().map(round1) };
  console.log(
    `pullthrough refresh benchmark: ${TAGS} tags, ${ROUNDS} rounds, concurrency ${CONCURRENCY}, upstream delay ${DELAY_MS} ms; ` +
      `node ${process.version}, ${cpus().length} CPUs, load ${load.start.join(' ')}`,
  );
  console.log(describeSources(git));

  up = await startFakeUpstream();
  harness = await createHarness([{ prefix: 'p', upstream: up.url, ttlSeconds: 3600, refreshConcurrency: CONCURRENCY }]);
  const h = harness;
  const fake = up;
  const T0 = h.clock.now;
  const synth = synthesizeTags(T0, SYNTH);
  const due = synth.filter((t) => t.due);
  const moved = synth.filter((t) => t.moved);
  if (moved.length !== MOVED) throw new Error(`only ${moved.length} tags can move with BENCH_TAGS=${TAGS}`);

  // Seed: the fake gets each tag's manifest (revision 1 for the moved ones), the index revision 0 of all.
  const tSeed = performance.now();
  await seedTagIndex(h.index, synth);
  for (const t of synth) fake.putManifest(t.repo, t.tag, { body: t.upstream.body, contentType: OCI_MANIFEST });
  const seedMs = performance.now() - tSeed;
  console.log(`seeded ${TAGS} tags (${due.length} due, ${moved.length} moved) in ${Math.round(seedMs)} ms; index ${h.dbPath}`);
  fake.faults.delayMs = DELAY_MS || undefined;

  const headPaths = due.map((t) => `/v2/${t.repo}/manifests/${t.tag}`);
  const baselinePass = async (paths = headPaths) => {
    const limit = pLimit(CONCURRENCY);
    let failures = 0;
    await Promise.all(
      paths.map((p) =>
        limit(async () => {
          const res = await fetch(`${fake.url}${p}`, { method: 'HEAD', headers: { Accept: MANIFEST_ACCEPT, 'Accept-Encoding': 'identity' } });
          await res.body?.cancel();
          if (res.status !== 200 || !res.headers.get('docker-content-digest')) failures++;
        }),
      ),
    );
    return failures;
  };

  // Warm-up (untimed): a tenth of each pass, so the JIT, fetch and the heap reach their working size before
  // the first measured pass. The refresh part leaves 1/10 of the due tags checked; round 1 makes them due again.
  const tWarm = performance.now();
  const warm = await h.refresher.refreshDue({ maxTags: Math.floor(due.length / 10) });
  await baselinePass(headPaths.slice(0, Math.floor(due.length / 10)));
  const warmMs = performance.now() - tWarm;
  console.log(`warm-up: ${warm.checked} tags refreshed and as many direct HEADs in ${Math.round(warmMs)} ms (untimed)`);

  const passes: Pass[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    // Every tag checked before is due again, and the 50 move once more upstream (the index holds revision 0
    // or 1 of them; round r publishes revision r + 2).
    h.clock.now += HOUR + 1;
    for (const t of moved) fake.putManifest(t.repo, t.tag, { body: manifestBody(t.index, round + 2), contentType: OCI_MANIFEST });
    const order: Array<Pass['kind']> = round % 2 === 0 ? ['refresh', 'baseline'] : ['baseline', 'refresh'];
    const line: string[] = [];
    for (const [pos, kind] of order.entries()) {
      (globalThis as { gc?: () => void }).gc?.();
      fake.reset();
      clientFlight.reset();
      const problems: string[] = [];
      const sampler = startSampler();
      const t0 = performance.now();
      let report: RefreshReport | undefined;
      if (kind === 'refresh') report = await h.refresher.refreshDue();
      else {
        const failures = await baselinePass();
        if (failures) problems.push(`${failures} baseline HEADs failed`);
      }
      const ms = performance.now() - t0;
      const mem = sampler.stop();
      const heads = fake.count({ method: 'HEAD', kind: 'manifest' });
      const gets = fake.count({ method: 'GET', kind: 'manifest' });
      if (heads !== due.length) problems.push(`${heads} HEADs, expected ${due.length}`);
      if (kind === 'refresh') {
        const r = report!;
        if (r.checked !== due.length || r.moved !== MOVED || r.unchanged !== due.length - MOVED || r.errors || r.gone || r.stoppedEarly) {
          problems.push(`unexpected report ${JSON.stringify(r)}`);
        }
        if (gets !== MOVED) problems.push(`${gets} GETs, expected ${MOVED}`);
        const perPath = new Map<string, number>();
        for (const q of fake.requests) if (q.method === 'HEAD') perPath.set(q.path, (perPath.get(q.path) ?? 0) + 1);
        if (perPath.size !== due.length || [...perPath.values()].some((n) => n !== 1)) problems.push('not exactly one HEAD per due tag');
      }
      if (clientFlight.max > CONCURRENCY) problems.push(`${clientFlight.max} requests in flight, cap ${CONCURRENCY}`);
      const pass: Pass = {
        round: round + 1, kind, order: pos, ms: round1(ms), requestsPerSecond: Math.round(((heads + gets) / ms) * 1000), heads, gets,
        maxInFlightClient: clientFlight.max, maxInFlightUpstream: fake.maxInFlight,
        rssStartMB: toMB(sampler.start.rss), peakRssMB: toMB(mem.peakRss), rssEndMB: toMB(mem.end.rss),
        heapStartMB: toMB(sampler.start.heapUsed), peakHeapMB: toMB(mem.peakHeap), memSamples: mem.samples,
        ...(report ? { report } : {}), problems,
      };
      passes.push(pass);
      line.push(`${kind} ${Math.round(ms)} ms (peak RSS ${pass.peakRssMB} MB)${problems.length ? ` PROBLEMS: ${problems.join('; ')}` : ''}`);
    }
    console.log(`round ${round + 1}/${ROUNDS}: ${line.join(', ')}`);
  }
  load.end = loadavg().map(round1);
  const loadEnd = load.end;

  // ---- summary
  const of = (k: Pass['kind']) => passes.filter((p) => p.kind === k);
  const summary = (k: Pass['kind']) => {
    const ps = of(k);
    const ms = median(ps.map((p) => p.ms));
    return {
      medianMs: round1(ms),
      minMs: Math.min(...ps.map((p) => p.ms)),
      maxMs: Math.max(...ps.map((p) => p.ms)),
      tagsPerSecond: Math.round((due.length / ms) * 1000),
      peakRssMB: Math.max(...ps.map((p) => p.peakRssMB)),
      /** Median over the passes of (peak RSS - RSS at the pass's start): the first pass of the process also grows the heap to its working size. */
      rssGrowthMedianMB: round1(median(ps.map((p) => p.peakRssMB - p.rssStartMB))),
      rssGrowthMaxMB: round1(Math.max(...ps.map((p) => p.peakRssMB - p.rssStartMB))),
      peakHeapMB: Math.max(...ps.map((p) => p.peakHeapMB)),
      heads: median(ps.map((p) => p.heads)),
      gets: median(ps.map((p) => p.gets)),
      maxInFlightClient: Math.max(...ps.map((p) => p.maxInFlightClient)),
      maxInFlightUpstream: Math.max(...ps.map((p) => p.maxInFlightUpstream)),
    };
  };
  const stats = { refresh: summary('refresh'), baseline: summary('baseline') };
  const ratio = round3(stats.refresh.medianMs / stats.baseline.medianMs);
  const ratioOfMins = round3(stats.refresh.minMs / stats.baseline.minMs);
  const problems = passes.flatMap((p) => p.problems.map((x) => `round ${p.round} ${p.kind}: ${x}`));

  const pad = (s: string | number, n: number) => String(s).padStart(n);
  console.log('');
  console.log(
    `${'pass'.padEnd(9)}${pad('median ms', 10)}${pad('min', 8)}${pad('max', 8)}${pad('tags/s', 8)}${pad('peak RSS', 10)}${pad('growth', 8)}${pad('heap', 9)}` +
      `${pad('HEADs', 7)}${pad('GETs', 6)}${pad('inflight', 10)}${pad('(fake)', 8)}`,
  );
  for (const k of ['refresh', 'baseline'] as const) {
    const s = stats[k];
    console.log(
      `${k.padEnd(9)}${pad(Math.round(s.medianMs), 10)}${pad(Math.round(s.minMs), 8)}${pad(Math.round(s.maxMs), 8)}${pad(s.tagsPerSecond, 8)}` +
        `${pad(`${s.peakRssMB} MB`, 10)}${pad(`+${s.rssGrowthMedianMB}`, 8)}${pad(`${s.peakHeapMB} MB`, 9)}${pad(s.heads, 7)}${pad(s.gets, 6)}${pad(s.maxInFlightClient, 10)}${pad(s.maxInFlightUpstream, 8)}`,
    );
  }
  console.log('');
  console.log(`refresh / baseline: ${ratio.toFixed(3)}× (medians), ${ratioOfMins.toFixed(3)}× (fastest passes)`);
  console.log(
    `RSS and heap: the whole process (fake upstream included); "growth": median rise of RSS during a pass. ` +
      `Load average ${load.start.join(' ')} → ${loadEnd.join(' ')}`,
  );
  if (problems.length) console.log(`PROBLEMS:\n  ${problems.join('\n  ')}`);

  const result = {
    benchmark: 'refresh',
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    git,
    host: { node: process.version, platform: `${process.platform}-${process.arch}`, cpus: cpus().length, loadavg: load },
    setup: {
      tags: TAGS, repositories: REPOS, due: due.length, movedPerPass: MOVED, concurrency: CONCURRENCY, upstreamDelayMs: DELAY_MS,
      rounds: ROUNDS, batchSize: parseConfig({ rules: [{ prefix: 'p', upstream: fake.url }] }).refresh.batchSize, seedMs: round1(seedMs), memSampleMs: SAMPLE_MS,
    },
    warmUp: { refreshedTags: warm.checked, directHeads: Math.floor(due.length / 10), ms: round1(warmMs) },
    stats,
    ratio,
    ratioOfMins,
    ok: problems.length === 0,
    problems,
    passes,
  };
  writeResults('refresh', stamp, result);
  return problems.length === 0;
}

let ok = false;
try {
  ok = await bounded('the benchmark', TOTAL_TIMEOUT_MS, main());
} catch (err) {
  console.error(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
} finally {
  await bounded('cleanup', 30_000, cleanup()).catch((e: unknown) => console.error(String(e)));
}
process.exit(ok ? 0 : 1);
