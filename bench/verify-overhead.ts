/**
 * Signature-policy benchmark (`npm run bench`, issue 13): what verifying signatures at fill time costs, and that a
 * warm pull pays nothing. One local server with two rules on the same upstream (Debian's docker-registry): `plain`
 * (no policy) and `signed` (mode enforce, a key generated here; every image carries a cosign signature under
 * cosign's `sha256-<hex>.sig` tag, built by test/support/cosign-signatures.ts).
 *
 * - manifest fill: for each of BENCH_IMAGES small images, a cold manifest GET through each rule (the order swapped
 *   every image): wall ms at the client, the server's `ms` and `upstreamRequests` from its request line;
 * - warm: the same GETs again (stored): upstream requests and ms;
 * - full pull: a ≥ 50 MiB image (4 layers) pulled cold with skopeo through a fresh server with the policy and one
 *   without, BENCH_ROUNDS times, alternating.
 *
 * Environment: BENCH_IMAGES (default 20), BENCH_ROUNDS (default 3), BENCH_TIMEOUT_MS (default 900 000).
 * Output: a table and `bench/results/verify-overhead-<time>.json`. Exit 1 on a failed request, not on the figures.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cosignSignatureManifest, generateSigningKey, pushArtifact, signatureLayer, signatureTag } from '../test/support/cosign-signatures.js';
import { pushLargeImage, pushSinglePlatformImage } from '../test/support/images.js';
import { type LocalServer } from '../test/support/local-server.js';
import { scratchDir } from '../test/support/scratch.js';
import { imageRef, skopeoCopy } from '../test/support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { createFleet } from './pull-kit.js';
import { cleanupOnSignals, fileStamp, gitState, intEnv, median, runBench, writeResults } from './support.js';

const IMAGES = intEnv('BENCH_IMAGES', 20, 2);
const ROUNDS = intEnv('BENCH_ROUNDS', 3, 1);
const TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 900_000, 10_000);

let upstream: UpstreamRegistry | undefined;
/** The servers this benchmark starts, stopped (and their data dirs removed) at cleanup; the upstream last. */
const fleet = createFleet(async () => {
  await upstream?.stop();
});
const cleanup = () => fleet.cleanup();
cleanupOnSignals(cleanup);

type Rule = 'plain' | 'signed';
interface Fill { clientMs: number; serverMs: number; upstreamRequests: number }

/** The `n`-th request line the server logged for `path`, from its JSON log (waits up to 5 s for it to be written). */
async function requestLine(server: LocalServer, path: string, n: number): Promise<{ ms: number; upstreamRequests: number }> {
  for (let attempt = 0; attempt < 250; attempt++) {
    const lines = readFileSync(server.logPath, 'utf8').split('\n').filter((l) => l.includes('"message":"request"') && l.includes(`"path":"${path}"`));
    if (lines.length >= n) return JSON.parse(lines[n - 1]) as { ms: number; upstreamRequests: number };
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`no request line ${n} for ${path} in ${server.logPath}`);
}

async function main(): Promise<number> {
  upstream = await startUpstreamRegistry();
  const key = generateSigningKey('p256');
  const dir = scratchDir('bench-verify-');
  writeFileSync(join(dir, 'cosign.pub'), key.publicPem);
  const sign = async (name: string, digest: string) => pushArtifact(upstream!.url, name, cosignSignatureManifest([signatureLayer(key, digest)]), signatureTag(digest));
  const names: string[] = [];
  for (let i = 0; i < IMAGES; i++) {
    const name = `bench/img-${i}`;
    const img = await pushSinglePlatformImage(upstream.url, name, 'v1', { format: 'oci', arch: 'amd64', layerSources: ['/usr/share/doc/libc6'], salt: `${i}` });
    await sign(name, img.digest);
    names.push(name);
  }
  const large = await pushLargeImage(upstream.url, 'bench/large', 'v1', { minBytes: 50 * 1024 * 1024, layers: 4 });
  await sign('bench/large', large.digest);
  const bytes = large.blobs.reduce((a, b) => a + b.size, 0) + large.manifest.length;

  const rule = (prefix: Rule) => ({ prefix, upstream: upstream!.url, ...(prefix === 'signed' ? { verify: { mode: 'enforce', keys: [join(dir, 'cosign.pub')] } } : {}) });
  const env = { PULLTHROUGH_LOG_LEVEL: 'INFO' };
  const server = await fleet.start({ rules: [rule('plain'), rule('signed')] }, { env });

  const seen = new Map<string, number>();
  const get = async (r: Rule, name: string): Promise<Fill> => {
    const path = `/v2/${r}/${name}/manifests/v1`;
    seen.set(path, (seen.get(path) ?? 0) + 1);
    const t0 = performance.now();
    const res = await fetch(`${server.url}${path}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    await res.arrayBuffer();
    const clientMs = performance.now() - t0;
    if (res.status !== 200) throw new Error(`GET ${path}: ${res.status}`);
    const line = await requestLine(server, path, seen.get(path)!);
    return { clientMs, serverMs: line.ms, upstreamRequests: line.upstreamRequests };
  };
  await get('plain', names[0]); // warms the server's code paths and the upstream connection; not counted
  await get('signed', names[0]);
  const cold: Record<Rule, Fill[]> = { plain: [], signed: [] };
  const warm: Record<Rule, Fill[]> = { plain: [], signed: [] };
  for (const [i, name] of names.slice(1).entries()) {
    const order: Rule[] = i % 2 ? ['signed', 'plain'] : ['plain', 'signed'];
    for (const r of order) cold[r].push(await get(r, name));
    for (const r of order) warm[r].push(await get(r, name));
  }

  const pulls: Record<Rule, number[]> = { plain: [], signed: [] };
  for (let round = 0; round < ROUNDS; round++) {
    const order: Rule[] = round % 2 ? ['signed', 'plain'] : ['plain', 'signed'];
    for (const r of order) {
      const fresh = await fleet.start({ rules: [rule(r)] }, { env });
      const dest = scratchDir('bench-verify-pull-');
      try {
        const t0 = performance.now();
        const out = await skopeoCopy(imageRef(fresh.url, `${r}/bench/large`, 'v1'), dest, { timeoutMs: 120_000 });
        if (out.code !== 0) throw new Error(`skopeo (${r}): ${out.stderr}`);
        pulls[r].push(performance.now() - t0);
      } finally {
        rmSync(dest, { recursive: true, force: true });
        await fleet.stop(fresh);
      }
    }
  }

  const med = (xs: Fill[], k: keyof Fill) => median(xs.map((x) => x[k]));
  const summary = Object.fromEntries((['plain', 'signed'] as const).map((r) => [r, {
    coldClientMs: med(cold[r], 'clientMs'), coldServerMs: med(cold[r], 'serverMs'), coldUpstreamRequests: med(cold[r], 'upstreamRequests'),
    warmClientMs: med(warm[r], 'clientMs'), warmUpstreamRequests: Math.max(...warm[r].map((x) => x.upstreamRequests)), coldPullMs: median(pulls[r]),
  }])) as unknown as Record<Rule, Record<string, number>>;
  const f = (x: number) => x.toFixed(1).padStart(8);
  console.log(`signature policy overhead: ${IMAGES - 1} cold manifest fills per rule, ${ROUNDS} cold pulls of ${(bytes / 2 ** 20).toFixed(1)} MiB per rule (medians)`);
  console.log('rule      fill ms  server ms  upstream req   warm ms  warm upstream req   cold pull ms');
  for (const r of ['plain', 'signed'] as const) {
    const s = summary[r];
    console.log(`${r.padEnd(7)} ${f(s.coldClientMs)}  ${f(s.coldServerMs)}  ${String(s.coldUpstreamRequests).padStart(12)}  ${f(s.warmClientMs)}  ${String(s.warmUpstreamRequests).padStart(17)}  ${f(s.coldPullMs)}`);
  }
  const overhead = { fillMs: summary.signed.coldClientMs - summary.plain.coldClientMs, pullRatio: summary.signed.coldPullMs / summary.plain.coldPullMs };
  console.log(`fill-time overhead: +${overhead.fillMs.toFixed(1)} ms per manifest fill; cold pull ${overhead.pullRatio.toFixed(3)}x; warm pulls: ${summary.signed.warmUpstreamRequests} upstream requests`);
  const started = new Date();
  writeResults('verify-overhead', fileStamp(started), { at: started.toISOString(), ...gitState(), images: IMAGES, rounds: ROUNDS, bytes, cold, warm, pulls, summary, overhead });
  return 0;
}

runBench('signature policy benchmark', TIMEOUT_MS, main, cleanup);
