/**
 * Pull benchmark in the deployed shape (`npm run bench`): the packaged zips run as Lambda functions on moto behind
 * the HTTP API front (test/support/deployed/, as `npm run test:deployed`), skopeo pulling a ≥ 110 MiB image of 4
 * layers from Debian's docker-registry:
 *  - direct: straight from the registry;
 *  - cold:   through the front, the image not cached (`missMode: wait`: the registry function dispatches a fill per
 *            blob and answers each blob GET once the blob is in S3 — or 307 back to itself after `waitSeconds`);
 *  - warm:   the same image through the front again (presigned S3 GETs);
 *  - cold-redirect: another uncached image through a `missMode: redirect` rule whose upstream is the same registry
 *            behind a CDN front (test/support/cdn-front.ts): each blob miss answers 307 to the CDN at once while
 *            the fill function stores the blob; its direct baseline is a pull from the front (blobs from the CDN).
 * A cold pull needs blobs nobody cached, so every round pushes new images (the same files, another gzip level:
 * other bytes, about the same size) and pulls them direct → cold → warm; the ratios are per round
 * (cold_i/direct_i), reported as medians. Also reported: the fill function's MB/s per blob (its `blob filled` lines; DynamoDB reads
 * per registry request are counted by bench/pull-aws.ts, the same code). Part of the cold cost is the stand-ins'
 * own (moto's S3 keeps objects in a Python process; a new execution environment is a Node process start): these
 * figures bound what the design costs from above, they are not AWS's.
 *
 * Environment: BENCH_ROUNDS (default 3), BENCH_TIMEOUT_MS (default 900 000).
 * Output: a table and `bench/results/pull-deployed-<time>.json`. Exit 1 on a failed pull, not on a missed target.
 */
import { stringify } from 'yaml';
import { startCdnFront, type CdnFront } from '../test/support/cdn-front.js';
import { startDeployedShape, type DeployedShape } from '../test/support/deployed/deployed-shape.js';
import { pushLargeImage, type PushedImage } from '../test/support/images.js';
import { imageRef } from '../test/support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { timedPull } from './pull-kit.js';
import { cleanupOnSignals, describeSources, fileStamp, gitState, intEnv, median, runBench, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 3, 1);
const TOTAL_TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 900_000, 10_000);
const MIN_BYTES = 110 * 1024 * 1024;
/** gzip levels of the rounds' images (two images per round: wait, redirect; 4 rounds at most). */
const LEVELS = [6, 5, 7, 4, 8, 3, 9, 2];
/** Blobs this small (the config) fill in milliseconds: their MB/s says nothing. */
const MIN_RATE_BYTES = 1024 * 1024;

let upstream: UpstreamRegistry | undefined;
let shape: DeployedShape | undefined;
let front: CdnFront | undefined;
const cleanup = async () => {
  await shape?.stop().catch(() => undefined);
  await front?.stop().catch(() => undefined);
  await upstream?.stop().catch(() => undefined);
};
cleanupOnSignals(cleanup);

/** `blob filled` lines of a function's log: MB/s per blob (size / ms of the fill). */
function fillRates(log: string): Array<{ size: number; ms: number; mbPerSecond: number }> {
  return log.split('\n').flatMap((l) => {
    if (!l.includes('"blob filled"')) return [];
    const e = JSON.parse(l.slice(l.indexOf('{'))) as { size?: number; ms?: number };
    return e.size && e.size >= MIN_RATE_BYTES && e.ms ? [{ size: e.size, ms: e.ms, mbPerSecond: Math.round(e.size / 1e3 / e.ms) }] : [];
  });
}

async function main(): Promise<number> {
  if (ROUNDS * 2 > LEVELS.length) throw new Error(`BENCH_ROUNDS must be <= ${LEVELS.length / 2}`);
  const startedAt = new Date();
  const git = gitState();
  console.log(`pullthrough pull benchmark in the deployed shape (packaged zips on moto): ${ROUNDS} rounds, node ${process.version}`);
  console.log(describeSources(git));
  upstream = await startUpstreamRegistry();
  const up = upstream;
  front = await startCdnFront(up.url, up.dataDir);
  const cdn = front;
  const config = {
    rules: [
      { prefix: 'local', upstream: up.url },
      { prefix: 'cdn', upstream: cdn.url, missMode: 'redirect', insecureRedirectHosts: [cdn.cdnHost] },
    ],
  };
  const tShape = performance.now();
  shape = await startDeployedShape({ params: { allowAnonymousClients: 'true' }, config: stringify(config) });
  const s = shape;
  console.log(`deployed shape up in ${Math.round(performance.now() - tShape)} ms`);
  const fnNamed = (logicalId: string) => [...s.stack.functions.values()].find((f) => f.logicalId === logicalId)!.name;
  const [registry, fill] = [fnNamed('RegistryLambdaFunction'), fnNamed('FillLambdaFunction')];

  type Round = { round: number; bytes: number; directMs: number; coldMs: number; warmMs: number; fills: ReturnType<typeof fillRates> };
  const rounds: Round[] = [];
  const redirectRounds: Array<{ round: number; bytes: number; directMs: number; coldMs: number }> = [];
  for (let round = 0; round < ROUNDS; round++) {
    const name = `bench/large${round}`;
    const image: PushedImage = await pushLargeImage(up.url, name, 'v1', { minBytes: MIN_BYTES, layers: 4, gzipLevel: LEVELS[2 * round] });
    const viaCdn: PushedImage = await pushLargeImage(up.url, `${name}-cdn`, 'v1', { minBytes: MIN_BYTES, layers: 4, gzipLevel: LEVELS[2 * round + 1] });
    const bytes = image.blobs.reduce((a, b) => a + b.size, 0);
    const cacheRef = imageRef(s.front.url, `local/${name}`, 'v1');
    if (round === 0) await timedPull(imageRef(up.url, name, 'v1'), image); // page cache, skopeo binary
    const directMs = await timedPull(imageRef(up.url, name, 'v1'), image);
    const fillLogFrom = s.runtime.log(fill).length;
    const coldMs = await timedPull(cacheRef, image);
    await s.runtime.settled();
    const fills = fillRates(s.runtime.log(fill).slice(fillLogFrom));
    const warmMs = await timedPull(cacheRef, image);
    rounds.push({ round: round + 1, bytes, directMs: Math.round(directMs), coldMs: Math.round(coldMs), warmMs: Math.round(warmMs), fills });
    const cdnDirectMs = await timedPull(imageRef(cdn.url, `${name}-cdn`, 'v1'), viaCdn);
    const cdnColdMs = await timedPull(imageRef(s.front.url, `cdn/${name}-cdn`, 'v1'), viaCdn);
    await s.runtime.settled();
    redirectRounds.push({ round: round + 1, bytes: viaCdn.blobs.reduce((a, b) => a + b.size, 0), directMs: Math.round(cdnDirectMs), coldMs: Math.round(cdnColdMs) });
    console.log(
      `round ${round + 1}/${ROUNDS}: ${(bytes / 2 ** 20).toFixed(1)} MiB; direct ${Math.round(directMs)} ms, cold ${Math.round(coldMs)} ms ` +
        `(${(coldMs / directMs).toFixed(2)}×), warm ${Math.round(warmMs)} ms (${(warmMs / directMs).toFixed(2)}×); fills ${fills.map((f) => `${f.mbPerSecond} MB/s`).join(', ')}; ` +
        `redirect: direct from the CDN front ${Math.round(cdnDirectMs)} ms, cold ${Math.round(cdnColdMs)} ms (${(cdnColdMs / cdnDirectMs).toFixed(2)}×)`,
    );
  }
  const ratio = (k: 'coldMs' | 'warmMs') => Math.round(median(rounds.map((r) => r[k] / r.directMs)) * 100) / 100;
  const fillMBps = rounds.flatMap((r) => r.fills.map((f) => f.mbPerSecond));
  const summary = {
    directMedianMs: median(rounds.map((r) => r.directMs)), coldMedianMs: median(rounds.map((r) => r.coldMs)), warmMedianMs: median(rounds.map((r) => r.warmMs)),
    coldPerDirect: ratio('coldMs'), warmPerDirect: ratio('warmMs'), fillMBpsMedian: fillMBps.length ? median(fillMBps) : undefined,
    directMBps: Math.round(median(rounds.map((r) => r.bytes / 1e3 / r.directMs))),
    coldRedirectPerDirect: Math.round(median(redirectRounds.map((r) => r.coldMs / r.directMs)) * 100) / 100,
  };
  console.log(`\nmedians: direct ${summary.directMedianMs} ms, cold ${summary.coldMedianMs} ms, warm ${summary.warmMedianMs} ms;` +
    ` per round cold/direct ${summary.coldPerDirect}×, warm/direct ${summary.warmPerDirect}×; fill ${summary.fillMBpsMedian} MB/s per blob (median), direct pull ${summary.directMBps} MB/s; ` +
    `missMode redirect: cold/direct (from the CDN front) ${summary.coldRedirectPerDirect}×`);
  writeResults('pull-deployed', fileStamp(startedAt), {
    benchmark: 'pull-deployed', startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), rounds: ROUNDS, git, functions: { registry, fill }, summary, samples: rounds, redirectSamples: redirectRounds,
  });
  return 0;
}

runBench('the deployed-shape pull benchmark', TOTAL_TIMEOUT_MS, main, cleanup);
