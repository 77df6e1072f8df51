/**
 * Pull benchmark (`npm run bench`): how long a real client (skopeo) takes to pull a ≥ 110 MiB image of 4 layers
 * built from this machine's files
 *  - direct: straight from the upstream (Debian's docker-registry on loopback);
 *  - cold:   through a FRESH pullthrough server with an empty data dir (a new server per pull; its start-up
 *            is not timed: the clock starts once `/v2/` answers);
 *  - warm:   through one long-lived pullthrough server whose cache already holds the image.
 * Then, upstream-bound (`BENCH_SLOW_ROUNDS`): the same image from a CDN front throttled to 20 MB/s per connection
 * (test/support/cdn-front.ts: a remote registry's speed), direct and cold, to show the layers filled ahead still run
 * side by side there (shared/registry/fill-ahead.ts): skopeo's serial pull through a cold cache then takes about
 * half the direct time (target ≤ 0.6×, a regression guard).
 * With `BENCH_BASELINE_REF=<git ref>`, the same cold and warm pulls also run through that commit's server
 * (`cold-base`, `warm-base`, a git worktree): before/after ratios from the same run.
 * The kinds are interleaved round-robin (the order rotates every round) so machine noise hits them alike; every
 * pull is verified outside the timed interval (bench/pull-kit.ts).
 *
 * Environment:
 *  - BENCH_ROUNDS       rounds (default 5; each round is one pull of each kind)
 *  - BENCH_TIMEOUT_MS   bound on the whole run (default 1 200 000); every step has its own bound too
 *  - BENCH_LOG_LEVEL    PULLTHROUGH_LOG_LEVEL of the servers (default INFO: one JSON line per request)
 *  - BENCH_BASELINE_REF a commit to compare against (unset: none)
 *  - BENCH_SLOW_ROUNDS  rounds of the upstream-bound phase (default 3; 0 skips it)
 *
 * Output: a table on stdout and the same figures as JSON in `bench/results/pull-<ISO time>.json`.
 * Exit code 0 when every pull succeeded (targets met or not), 1 on any failure.
 */
import { pushLargeImage, type PushedImage } from '../test/support/images.js';
import type { LocalServer } from '../test/support/local-server.js';
import { imageRef, runSkopeo, SKOPEO_BIN } from '../test/support/skopeo.js';
import { startCdnFront, type CdnFront } from '../test/support/cdn-front.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { breakdown, createFleet, printTable, readLogFrom, roundRobin, serverMedian, skopeoOverhead, summarize, timedPull, type PullKind } from './pull-kit.js';
import { cleanupOnSignals, describeSources, fileStamp, gitState, intEnv, median, runBench, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 5, 1);
const TOTAL_TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 1_200_000, 10_000);
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL || 'INFO';
const BASELINE_REF = process.env.BENCH_BASELINE_REF || undefined;
const SLOW_ROUNDS = intEnv('BENCH_SLOW_ROUNDS', 3, 0);
/** The upstream-bound phase's CDN speed per connection (bytes/s). */
const SLOW_BYTES_PER_SECOND = 20_000_000;

/** ≥ 100 MB in four layers (issue 11): 110 MiB = 115 MB. */
const MIN_BYTES = 110 * 1024 * 1024;
const LAYERS = 4;
const IMAGE_NAME = 'bench/large';
const IMAGE_TAG = 'v1';
/** Rule prefix of the cache: `local/bench/large` is served from the upstream's `bench/large`. */
const PREFIX = 'local';
const PUSH_TIMEOUT_MS = 300_000;

const TARGETS: Record<string, number> = { warm: 1.1, cold: 1.3 };
const SLOW_TARGETS: Record<string, number> = { cold: 0.6, 'cold-base': 0.6 };

let upstream: UpstreamRegistry | undefined;
let slowFront: CdnFront | undefined;
const fleet = createFleet(async () => {
  await slowFront?.stop();
  await upstream?.stop();
});
cleanupOnSignals(() => fleet.cleanup());

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

async function main(): Promise<number> {
  const startedAt = new Date();
  const skopeoVersion = (await runSkopeo(['--version'], 10_000)).stdout.trim();
  const git = gitState();
  console.log(`pullthrough pull benchmark: ${ROUNDS} rounds (BENCH_ROUNDS), ${SKOPEO_BIN} (${skopeoVersion}), node ${process.version}`);
  console.log(describeSources(git) + (BASELINE_REF ? `; baseline ${BASELINE_REF}` : ''));
  upstream = await startUpstreamRegistry();
  const up = upstream;
  const tPush = performance.now();
  const image = await pushLargeImage(up.url, IMAGE_NAME, IMAGE_TAG, { minBytes: MIN_BYTES, layers: LAYERS });
  const layers = image.blobs.slice(1); // blobs[0] is the config
  const totalBytes = image.blobs.reduce((a, b) => a + b.size, 0);
  console.log(
    `image: ${IMAGE_NAME}:${IMAGE_TAG} ${image.digest}\n  ${layers.length} layers, ${mib(totalBytes)} compressed (${totalBytes} bytes; ` +
      `layers ${layers.map((l) => mib(l.size)).join(', ')}), built+pushed in ${Math.round(performance.now() - tPush)} ms`,
  );

  const config = { rules: [{ prefix: PREFIX, upstream: up.url }] };
  const env = { PULLTHROUGH_LOG_LEVEL: LOG_LEVEL };
  const baseline = BASELINE_REF ? fleet.checkout(BASELINE_REF) : undefined;
  const cacheRef = (s: LocalServer) => imageRef(s.url, `${PREFIX}/${IMAGE_NAME}`, IMAGE_TAG);
  const directRef = imageRef(up.url, IMAGE_NAME, IMAGE_TAG);

  // Untimed warm-up: one direct pull (page cache, skopeo binary), and the warm servers' priming pulls.
  await timedPull(directRef, image);
  const warmKind = async (kind: string, root?: string): Promise<PullKind> => {
    const s = await fleet.start(config, { env, root });
    const primeMs = await timedPull(cacheRef(s), image);
    console.log(`${kind} server: ${s.url} (pid ${s.pid}), primed by one pull in ${Math.round(primeMs)} ms`);
    let offset = readLogFrom(s.logPath, 0).offset;
    return {
      kind,
      async run() {
        const ms = await timedPull(cacheRef(s), image);
        const r = readLogFrom(s.logPath, offset);
        offset = r.offset;
        return { ms, server: breakdown(r.lines) };
      },
    };
  };
  const coldKind = (kind: string, root?: string, cfg: unknown = config): PullKind => ({
    kind,
    async run() {
      const s = await fleet.start(cfg, { env, root }); // ready: /v2/ answered 200
      try {
        const skip = readLogFrom(s.logPath, 0).offset; // start-up lines and readiness probes
        const ms = await timedPull(cacheRef(s), image);
        return { ms, server: breakdown(readLogFrom(s.logPath, skip).lines) };
      } finally {
        await fleet.stop(s);
      }
    },
  });
  const kinds: PullKind[] = [
    { kind: 'direct', run: async () => ({ ms: await timedPull(directRef, image) }) },
    coldKind('cold'),
    await warmKind('warm'),
    ...(baseline ? [coldKind('cold-base', baseline), await warmKind('warm-base', baseline)] : []),
  ];
  const overhead = await skopeoOverhead(up.url, IMAGE_NAME, IMAGE_TAG, 5);
  console.log(`skopeo fixed overhead (inspect --raw, direct): median ${Math.round(median(overhead))} ms`);

  const samples = await roundRobin(ROUNDS, kinds);
  const summary = summarize(samples, kinds.map((k) => k.kind));
  const targets = { ...TARGETS, ...(baseline ? { 'cold-base': TARGETS.cold, 'warm-base': TARGETS.warm } : {}) };
  printTable(summary, targets);
  console.log('');
  console.log(`skopeo fixed overhead ≈ ${Math.round(median(overhead))} ms per run (included in every figure above)`);
  console.log('server time per pull, from its request log (medians; skopeo fetches blobs one after another into dir:):');
  const server: Record<string, Record<string, number>> = {};
  for (const k of kinds.map((x) => x.kind).filter((x) => x !== 'direct')) {
    server[k] = {
      requests: serverMedian(samples, k, (b) => b.requests),
      blobRedirectsMs: Math.round(serverMedian(samples, k, (b) => b.blobRedirects.ms)),
      blobBodiesMs: Math.round(serverMedian(samples, k, (b) => b.blobBodies.ms)),
      fillsMs: Math.round(serverMedian(samples, k, (b) => b.fills.ms)),
    };
    const s = server[k];
    console.log(`  ${k}: ${s.requests} requests; blob GETs → 307 ${s.blobRedirectsMs} ms; /_blobs/ bodies ${s.blobBodiesMs} ms` + (s.fillsMs ? `; fills ${s.fillsMs} ms` : ''));
  }
  const met = Object.fromEntries(Object.entries(targets).map(([k, t]) => [k, summary.ratios[k] <= t]));
  const slow = SLOW_ROUNDS > 0 ? await upstreamBound(up, image, coldKind, baseline) : undefined;
  writeResults('pull', fileStamp(startedAt), {
    benchmark: 'pull', startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), rounds: ROUNDS, git, baselineRef: BASELINE_REF,
    host: { node: process.version, skopeo: skopeoVersion, platform: `${process.platform}-${process.arch}` },
    image: { name: IMAGE_NAME, tag: IMAGE_TAG, digest: image.digest, totalBytes, layerCount: layers.length, layers: layers.map((l) => ({ digest: l.digest, size: l.size })), config: image.blobs[0] },
    targets, ...summary, met,
    skopeoOverheadMs: { median: Math.round(median(overhead) * 10) / 10, samples: overhead.map((x) => Math.round(x * 10) / 10) },
    serverMedians: server, samples, upstreamBound: slow,
  });
  return 0;
}

/** The upstream-bound phase (see the file header): direct and cold through a CDN front at 20 MB/s per connection. */
async function upstreamBound(up: UpstreamRegistry, image: PushedImage, coldKind: (kind: string, root?: string, cfg?: unknown) => PullKind, baseline?: string) {
  slowFront = await startCdnFront(up.url, up.dataDir, { cdnBytesPerSecond: SLOW_BYTES_PER_SECOND });
  const cfg = { rules: [{ prefix: PREFIX, upstream: slowFront.url, insecureRedirectHosts: [slowFront.cdnHost] }] };
  console.log(`\nupstream-bound: the same image from a CDN front at ${SLOW_BYTES_PER_SECOND / 1e6} MB/s per connection, ${SLOW_ROUNDS} rounds (BENCH_SLOW_ROUNDS)`);
  const kinds: PullKind[] = [
    { kind: 'direct', run: async () => ({ ms: await timedPull(imageRef(slowFront!.url, IMAGE_NAME, IMAGE_TAG), image) }) },
    coldKind('cold', undefined, cfg),
    ...(baseline ? [coldKind('cold-base', baseline, cfg)] : []),
  ];
  const samples = await roundRobin(SLOW_ROUNDS, kinds);
  const summary = summarize(samples, kinds.map((k) => k.kind));
  const targets = Object.fromEntries(kinds.map((k) => k.kind).filter((k) => SLOW_TARGETS[k]).map((k) => [k, SLOW_TARGETS[k]]));
  printTable(summary, targets);
  return { bytesPerSecond: SLOW_BYTES_PER_SECOND, rounds: SLOW_ROUNDS, targets, ...summary, samples };
}

runBench('the benchmark', TOTAL_TIMEOUT_MS, main, () => fleet.cleanup());
