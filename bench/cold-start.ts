/**
 * Cold-start benchmark (`npm run bench`, or `npx tsx bench/cold-start.ts`): what a new Lambda execution
 * environment of each bundle costs, in the deployed shape (test/support/deployed/: the packaged zips run in plain
 * Node processes with the template's environment, on moto), and what `--enable-source-maps` in NODE_OPTIONS adds.
 *
 * For each round, each function and each NODE_OPTIONS variant (the deployed one, and with/without
 * `--enable-source-maps`), the function's idle environments are reclaimed and it is invoked twice with the same
 * event: the first invocation starts a new environment (cold), the second reuses it (warm). Recorded per cold
 * start: the init time (the handler module's import, Lambda's `Init Duration`), the start time (spawn until
 * ready: Node's own start-up plus the init), both also as CPU time (user + system: steadier than wall time on a
 * shared machine), the first invocation's duration; and the warm invocation's.
 * The events are each function's everyday work on a cache that holds one image:
 *  - registry: `GET /v2/<name>/manifests/<tag>` through the HTTP API front (a hit: DynamoDB reads);
 *  - fill: a fill job for a blob already stored (a stat and a link);
 *  - refresh: the scheduled event (a query of the due index; nothing is due);
 *  - gc: a dry-run pass over that cache.
 * Variants run round-robin, the order rotating every round, so machine noise hits them alike.
 *
 * Environment: BENCH_ROUNDS (default 7), BENCH_TIMEOUT_MS (default 600 000).
 * Output: a table on stdout, the samples in `bench/results/cold-start-<time>.json`. Exit 1 on any failure.
 */
import { stringify } from 'yaml';
import { startCountingProxy, type CountingProxy } from '../test/support/counting-proxy.js';
import { scheduledEvent, startDeployedShape, type DeployedShape } from '../test/support/deployed/deployed-shape.js';
import type { InvocationRecord } from '../test/support/deployed/lambda-runtime.js';
import { pushSinglePlatformImage } from '../test/support/images.js';
import { pullImage } from '../test/support/pull.js';
import { imageRef } from '../test/support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { bounded, cleanupOnSignals, describeSources, fileStamp, gitState, intEnv, median, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 7, 1);
const TOTAL_TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 600_000, 10_000);
const SOURCE_MAPS = '--enable-source-maps';

interface Sample {
  round: number;
  function: string;
  nodeOptions: string;
  initMs: number;
  startMs: number;
  initCpuMs: number;
  startCpuMs: number;
  firstInvocationMs: number;
  warmInvocationMs: number;
}

const round1 = (x: number) => Math.round(x * 10) / 10;

let upstream: UpstreamRegistry | undefined;
let proxy: CountingProxy | undefined;
let shape: DeployedShape | undefined;
const cleanup = async () => {
  await shape?.stop();
  await proxy?.stop();
  await upstream?.stop();
};

async function main(): Promise<void> {
  const startedAt = new Date();
  const git = gitState();
  upstream = await startUpstreamRegistry();
  proxy = await startCountingProxy(upstream.url);
  const image = await pushSinglePlatformImage(upstream.url, 'bench/app', 'v1', { format: 'oci', arch: 'amd64', layerSources: ['/usr/share/common-licenses'] });
  const config = { rules: [{ prefix: 'local', upstream: proxy.url }] };
  shape = await startDeployedShape({ params: { allowAnonymousClients: 'true' }, config: stringify(config) });
  const s = shape;
  // The cache holds the image: the registry's manifest GET is a hit, the fill's blob is stored.
  await pullImage(imageRef(s.front.url, 'local/bench/app', 'v1'), { dirPrefix: 'bench-cold-start-' });
  await s.runtime.settled();

  const fnNamed = (logicalId: string) => [...s.stack.functions.values()].find((f) => f.logicalId === logicalId)!;
  const deployed = fnNamed('RegistryLambdaFunction').environment.NODE_OPTIONS ?? '';
  const variants = [...new Set([deployed, deployed.includes(SOURCE_MAPS) ? deployed.replace(SOURCE_MAPS, '').trim() : `${deployed} ${SOURCE_MAPS}`.trim()])];
  const refreshSchedule = s.stack.schedules.find((x) => x.targets.some((t) => t.functionName === fnNamed('RefreshLambdaFunction').name))!;
  /** Each function's everyday invocation; resolves with its invocation record. */
  const invocations: Record<string, () => Promise<InvocationRecord>> = {
    registry: async () => {
      const res = await fetch(`${s.front.url}/v2/local/bench/app/manifests/v1`, { headers: { accept: image.mediaType } });
      if (res.status !== 200) throw new Error(`manifest GET: ${res.status} ${await res.text()}`);
      await res.arrayBuffer();
      return s.runtime.invocations.at(-1)!;
    },
    fill: async () => {
      const layer = image.blobs.at(-1)!;
      await s.runtime.invoke(fnNamed('FillLambdaFunction').name, { name: 'local/bench/app', digest: layer.digest });
      return s.runtime.invocations.at(-1)!;
    },
    refresh: async () => {
      await s.runtime.invoke(fnNamed('RefreshLambdaFunction').name, scheduledEvent(refreshSchedule));
      return s.runtime.invocations.at(-1)!;
    },
    // A dry-run pass: nothing deleted between rounds.
    gc: async () => {
      await s.runtime.invoke(fnNamed('GcLambdaFunction').name, { action: 'gc', dryRun: true });
      return s.runtime.invocations.at(-1)!;
    },
  };

  const samples: Sample[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const order = variants.map((_, i) => variants[(i + round) % variants.length]);
    for (const nodeOptions of order) {
      for (const [name, invoke] of Object.entries(invocations)) {
        const fn = fnNamed(`${name[0].toUpperCase()}${name.slice(1)}LambdaFunction`);
        fn.environment.NODE_OPTIONS = nodeOptions;
        await s.runtime.recycle(fn.name);
        const cold = await invoke();
        const warm = await invoke();
        for (const r of [cold, warm]) if (r.error || r.functionName !== fn.name) throw new Error(`${fn.name}: ${JSON.stringify(r.error ?? r.functionName)}`);
        if (!cold.cold || warm.cold) throw new Error(`${fn.name}: expected a cold then a warm invocation`);
        samples.push({
          round, function: name, nodeOptions, initMs: cold.initMs!, startMs: cold.startMs!, initCpuMs: cold.initCpuMs!, startCpuMs: cold.startCpuMs!,
          firstInvocationMs: cold.durationMs, warmInvocationMs: warm.durationMs,
        });
      }
    }
  }

  const rows = Object.keys(invocations).flatMap((name) =>
    variants.map((nodeOptions) => {
      const mine = samples.filter((x) => x.function === name && x.nodeOptions === nodeOptions);
      const m = (k: keyof Sample) => round1(median(mine.map((x) => x[k] as number)));
      return {
        function: name, nodeOptions, initMs: m('initMs'), startMs: m('startMs'), initCpuMs: m('initCpuMs'), startCpuMs: m('startCpuMs'),
        firstInvocationMs: m('firstInvocationMs'), warmInvocationMs: m('warmInvocationMs'),
      };
    }),
  );
  const sizes = Object.fromEntries(
    Object.entries(s.packaged.zips).map(([name, z]) => [name, Object.fromEntries(z.entries.map((e) => [e.name, e.size]))]),
  );

  console.log(`\ncold starts in the deployed shape: ${ROUNDS} rounds, medians (ms); deployed NODE_OPTIONS=${JSON.stringify(deployed)}; ${describeSources(git)}`);
  console.log('function  NODE_OPTIONS             init  (CPU)   start  (CPU)   1st invocation  warm invocation');
  const col = (x: number, w: number) => String(x).padStart(w);
  for (const r of rows) {
    console.log(
      `${r.function.padEnd(9)} ${JSON.stringify(r.nodeOptions).padEnd(22)} ${col(r.initMs, 6)} ${col(r.initCpuMs, 6)} ${col(r.startMs, 7)} ${col(r.startCpuMs, 6)} ${col(r.firstInvocationMs, 16)} ${col(r.warmInvocationMs, 16)}`,
    );
  }
  const withMaps = variants.find((v) => v.includes(SOURCE_MAPS))!;
  const without = variants.find((v) => !v.includes(SOURCE_MAPS))!;
  console.log(`\nwhat ${SOURCE_MAPS} adds to a cold start (medians with vs without it):`);
  for (const name of Object.keys(invocations)) {
    const a = rows.find((r) => r.function === name && r.nodeOptions === withMaps)!;
    const b = rows.find((r) => r.function === name && r.nodeOptions === without)!;
    const wall = [a.startMs + a.firstInvocationMs, b.startMs + b.firstInvocationMs];
    console.log(
      `  ${name.padEnd(9)} start + 1st invocation ${round1(wall[0] - wall[1])} ms (${(wall[0] / wall[1]).toFixed(2)}×); ` +
        `process CPU until ready ${round1(a.startCpuMs - b.startCpuMs)} ms (${(a.startCpuMs / b.startCpuMs).toFixed(2)}×)`,
    );
  }
  writeResults('cold-start', fileStamp(startedAt), { startedAt, git, rounds: ROUNDS, deployedNodeOptions: deployed, node: process.version, rows, samples, bundleBytes: sizes });
}

cleanupOnSignals(cleanup);
bounded('the cold-start benchmark', TOTAL_TIMEOUT_MS, main())
  .then(cleanup, async (e: unknown) => {
    console.error(e instanceof Error ? e.stack : String(e));
    await cleanup();
    process.exitCode = 1;
  });
