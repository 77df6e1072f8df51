/**
 * Pull benchmark (`npm run bench`): how long a real client (skopeo) takes to pull a >= 50 MiB image
 *  - direct: straight from the upstream (Debian's docker-registry on loopback);
 *  - cold:   through a FRESH pullthrough server with an empty data dir (a new server per pull; its start-up
 *            is not timed: the clock starts once `/v2/` answers);
 *  - warm:   through one long-lived pullthrough server whose cache already holds the image.
 * The three kinds are interleaved round-robin (the order rotates every round) so machine noise hits them
 * alike. Every pull goes to a fresh `dir:` destination, is verified (manifest digest, and every blob's size
 * and sha256) outside the timed interval, and is deleted afterwards.
 *
 * Environment:
 *  - BENCH_ROUNDS       rounds (default 5; each round is one pull of each kind)
 *  - BENCH_TIMEOUT_MS   bound on the whole run (default 900 000); every step has its own bound too
 *  - BENCH_LOG_LEVEL    PULLTHROUGH_LOG_LEVEL of the servers (default INFO: one JSON line per request)
 *  - BENCH_KEEP_LOGS=1  copy the servers' logs to bench/results/logs-<stamp>/
 *
 * Output: a table on stdout and the same figures as JSON in `bench/results/pull-<ISO time>.json`.
 * Exit code 0 when every pull succeeded (targets met or not), 1 on any failure.
 */
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, createReadStream, fstatSync, mkdirSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { pushLargeImage, type PushedImage } from '../test/support/images.js';
import { startLocalServer, type LocalServer } from '../test/support/local-server.js';
import { scratchDir } from '../test/support/scratch.js';
import { imageRef, runSkopeo, skopeoCopy, skopeoInspect, SKOPEO_BIN } from '../test/support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../test/support/upstream-registry.js';
import { bounded, cleanupOnSignals, describeSources, fileStamp, gitState, intEnv, median, RESULTS_DIR, ROOT, writeResults } from './support.js';

const ROUNDS = intEnv('BENCH_ROUNDS', 5, 1);
const TOTAL_TIMEOUT_MS = intEnv('BENCH_TIMEOUT_MS', 900_000, 10_000);
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL || 'INFO';
const KEEP_LOGS = process.env.BENCH_KEEP_LOGS === '1';

const MIN_BYTES = 50 * 1024 * 1024;
const LAYERS = 4;
const IMAGE_NAME = 'bench/large';
const IMAGE_TAG = 'v1';
/** Rule prefix of the cache: `local/bench/large` is served from the upstream's `bench/large`. */
const PREFIX = 'local';

const PULL_TIMEOUT_MS = 120_000;
const PUSH_TIMEOUT_MS = 300_000;
const SERVER_STOP_TIMEOUT_MS = 15_000;

const TARGETS = { warm: 1.1, cold: 1.6 } as const;

type Kind = 'direct' | 'cold' | 'warm';
const KINDS: readonly Kind[] = ['direct', 'cold', 'warm'];

/** Server-side view of one pull through the cache, from its JSON request log. Times in ms. */
interface ServerBreakdown {
  requests: number;
  /** `/v2/` probes, manifest requests, blob HEADs */
  other: { count: number; ms: number };
  /** blob GETs on `/v2/.../blobs/...` (307 → /_blobs/; on a miss this includes the whole upstream fill) */
  blobRedirects: { count: number; ms: number; maxMs: number };
  /** GETs of the signed `/_blobs/...` URLs (the bytes themselves) */
  blobBodies: { count: number; ms: number; maxMs: number };
  /** `blob filled` lines: upstream download + hash + fsync + rename (cold only) */
  fills: { count: number; ms: number; maxMs: number };
  statuses: Record<string, number>;
}

interface Sample {
  round: number;
  kind: Kind;
  /** position in the round (0-based) */
  order: number;
  ms: number;
  server?: ServerBreakdown;
}

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

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

/** Reads the log lines appended to `path` since `offset`; returns them and the new offset. */
function readLogFrom(path: string, offset: number): { lines: string[]; offset: number } {
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

function breakdown(lines: string[]): ServerBreakdown {
  const b: ServerBreakdown = {
    requests: 0,
    other: { count: 0, ms: 0 },
    blobRedirects: { count: 0, ms: 0, maxMs: 0 },
    blobBodies: { count: 0, ms: 0, maxMs: 0 },
    fills: { count: 0, ms: 0, maxMs: 0 },
    statuses: {},
  };
  for (const line of lines) {
    let e: { message?: string; method?: string; path?: string; status?: number; ms?: number };
    try {
      e = JSON.parse(line);
    } catch {
      continue;
    }
    if (e.message === 'blob filled') {
      b.fills.count++;
      b.fills.ms += e.ms ?? 0;
      b.fills.maxMs = Math.max(b.fills.maxMs, e.ms ?? 0);
      continue;
    }
    if (e.message !== 'request' || typeof e.path !== 'string') continue;
    b.requests++;
    b.statuses[String(e.status)] = (b.statuses[String(e.status)] ?? 0) + 1;
    const ms = e.ms ?? 0;
    if (e.path.startsWith('/_blobs/')) {
      b.blobBodies.count++;
      b.blobBodies.ms += ms;
      b.blobBodies.maxMs = Math.max(b.blobBodies.maxMs, ms);
    } else if (e.method === 'GET' && /\/blobs\/sha256:/.test(e.path)) {
      b.blobRedirects.count++;
      b.blobRedirects.ms += ms;
      b.blobRedirects.maxMs = Math.max(b.blobRedirects.maxMs, ms);
    } else {
      b.other.count++;
      b.other.ms += ms;
    }
  }
  const round1 = (x: number) => Math.round(x * 10) / 10;
  b.other.ms = round1(b.other.ms);
  b.blobRedirects.ms = round1(b.blobRedirects.ms);
  b.blobBodies.ms = round1(b.blobBodies.ms);
  return b;
}

// ---------------------------------------------------------------------------
// Everything started is tracked here and stopped by cleanup(), whatever happens.

const servers = new Set<LocalServer>();
let upstream: UpstreamRegistry | undefined;
const dirsToRemove = new Set<string>();
const keptLogs: string[] = [];
/** Set once cleanup starts: anything started afterwards (main() still running after a timeout) is stopped at once. */
let aborted = false;

async function stopServer(s: LocalServer): Promise<void> {
  try {
    await bounded(`stopping pullthrough (pid ${s.pid})`, SERVER_STOP_TIMEOUT_MS, s.stop());
  } catch (err) {
    // stop() already SIGKILLs after 10 s; this is the last resort, by PID.
    console.error(String(err));
    try {
      process.kill(s.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  } finally {
    servers.delete(s);
  }
}

let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    aborted = true;
    await Promise.all([...servers].map(stopServer));
    if (upstream) await upstream.stop().catch((e: unknown) => console.error(`stopping upstream: ${String(e)}`));
    for (const d of dirsToRemove) rmSync(d, { recursive: true, force: true });
  })();
  return cleaning;
}

cleanupOnSignals(cleanup);

async function startCache(upstreamUrl: string): Promise<LocalServer> {
  const dataDir = scratchDir('bench-data-');
  dirsToRemove.add(dataDir);
  const start = () =>
    startLocalServer({ rules: [{ prefix: PREFIX, upstream: upstreamUrl }] }, { dataDir, env: { PULLTHROUGH_LOG_LEVEL: LOG_LEVEL } });
  let s: LocalServer;
  try {
    s = await start();
  } catch (err) {
    // Start-up is not measured, so one retry is harmless (e.g. the free port was taken meanwhile); the
    // server log lives in the scratch dir, deleted at exit, so its tail goes into the message.
    console.error(`pullthrough did not start, retrying once: ${withLogTail(err)}`);
    rmSync(dataDir, { recursive: true, force: true });
    try {
      s = await start();
    } catch (err2) {
      throw new Error(withLogTail(err2));
    }
  }
  servers.add(s);
  if (aborted) {
    await stopServer(s);
    throw new Error('aborted');
  }
  return s;
}

/** The error's message plus the tail of the server log it names (`see <path>`). */
function withLogTail(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const m = /see (\S+\.log)/.exec(msg);
  if (!m) return msg;
  try {
    return `${msg}\n--- ${m[1]} (tail) ---\n${readFileSync(m[1], 'utf8').slice(-3000)}`;
  } catch {
    return msg;
  }
}

function keepLog(s: LocalServer, label: string, stamp: string): void {
  if (!KEEP_LOGS) return;
  const dir = join(RESULTS_DIR, `logs-${stamp}`);
  mkdirSync(dir, { recursive: true });
  const to = join(dir, `${label}.log`);
  copyFileSync(s.logPath, to);
  keptLogs.push(to);
}

/** One timed skopeo copy into a fresh dir; verified afterwards (untimed), then deleted. */
async function timedPull(ref: string, image: PushedImage): Promise<number> {
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

/** Fixed cost of a skopeo run against the upstream (process start, https→http fallback, one manifest GET). */
async function skopeoOverhead(upstreamUrl: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await skopeoInspect(imageRef(upstreamUrl, IMAGE_NAME, IMAGE_TAG), { raw: true, timeoutMs: 30_000 });
    const ms = performance.now() - t0;
    if (r.code !== 0) throw new Error(`skopeo inspect failed: ${r.stderr}`);
    out.push(ms);
  }
  return out;
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const stamp = fileStamp(startedAt);
  const skopeoVersion = (await runSkopeo(['--version'], 10_000)).stdout.trim();
  const git = gitState();

  console.log(`pullthrough pull benchmark: ${ROUNDS} rounds (BENCH_ROUNDS), ${SKOPEO_BIN} (${skopeoVersion}), node ${process.version}`);
  console.log(describeSources(git));
  upstream = await startUpstreamRegistry();
  console.log(`upstream: docker-registry ${upstream.url} (pid ${upstream.pid})`);

  const tPush = performance.now();
  const image = await bounded('pushing the image', PUSH_TIMEOUT_MS, pushLargeImage(upstream.url, IMAGE_NAME, IMAGE_TAG, { minBytes: MIN_BYTES, layers: LAYERS }));
  const layers = image.blobs.slice(1); // blobs[0] is the config
  const totalBytes = image.blobs.reduce((a, b) => a + b.size, 0);
  console.log(
    `image: ${IMAGE_NAME}:${IMAGE_TAG} ${image.digest}\n` +
      `  ${layers.length} layers, ${mib(totalBytes)} compressed in total (${totalBytes} bytes; layers ${layers.map((l) => mib(l.size)).join(', ')}), ` +
      `built+pushed in ${Math.round(performance.now() - tPush)} ms`,
  );

  const directRef = imageRef(upstream.url, IMAGE_NAME, IMAGE_TAG);
  const cacheRef = (s: LocalServer) => imageRef(s.url, `${PREFIX}/${IMAGE_NAME}`, IMAGE_TAG);

  // Untimed warm-up: one direct pull (page cache, skopeo binary), and the warm server's priming pull.
  await timedPull(directRef, image);
  const warm = await startCache(upstream.url);
  const primeMs = await timedPull(cacheRef(warm), image);
  console.log(`warm server: ${warm.url} (pid ${warm.pid}), primed by one pull in ${Math.round(primeMs)} ms`);
  let warmLogOffset = readLogFrom(warm.logPath, 0).offset;

  const overhead = await skopeoOverhead(upstream.url, 5);
  console.log(`skopeo fixed overhead (inspect --raw, direct): median ${Math.round(median(overhead))} ms`);

  const samples: Sample[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const order = KINDS.map((_, i) => KINDS[(i + round) % KINDS.length]);
    const line: string[] = [];
    for (const [pos, kind] of order.entries()) {
      let ms: number;
      let server: ServerBreakdown | undefined;
      if (kind === 'direct') {
        ms = await timedPull(directRef, image);
      } else if (kind === 'warm') {
        ms = await timedPull(cacheRef(warm), image);
        const r = readLogFrom(warm.logPath, warmLogOffset);
        warmLogOffset = r.offset;
        server = breakdown(r.lines);
      } else {
        const cold = await startCache(upstream.url); // ready: /v2/ answered 200
        try {
          const skip = readLogFrom(cold.logPath, 0).offset; // start-up lines and readiness probes
          ms = await timedPull(cacheRef(cold), image);
          server = breakdown(readLogFrom(cold.logPath, skip).lines);
        } finally {
          await stopServer(cold);
          keepLog(cold, `cold-round${round + 1}`, stamp);
          rmSync(cold.dataDir, { recursive: true, force: true });
        }
      }
      samples.push({ round: round + 1, kind, order: pos, ms: Math.round(ms * 10) / 10, server });
      line.push(`${kind} ${Math.round(ms)} ms`);
    }
    console.log(`round ${round + 1}/${ROUNDS}: ${line.join(', ')}`);
  }
  await stopServer(warm);
  keepLog(warm, 'warm', stamp);

  // ---- summary
  const stats = Object.fromEntries(
    KINDS.map((k) => {
      const xs = samples.filter((s) => s.kind === k).map((s) => s.ms);
      return [k, { medianMs: Math.round(median(xs) * 10) / 10, minMs: Math.min(...xs), maxMs: Math.max(...xs), samplesMs: xs }];
    }),
  ) as Record<Kind, { medianMs: number; minMs: number; maxMs: number; samplesMs: number[] }>;
  const ratio = (k: 'cold' | 'warm') => Math.round((stats[k].medianMs / stats.direct.medianMs) * 1000) / 1000;
  const ratios = { cold: ratio('cold'), warm: ratio('warm') };
  const met = { cold: ratios.cold <= TARGETS.cold, warm: ratios.warm <= TARGETS.warm };
  const serverMedians = (k: 'cold' | 'warm') => {
    const bs = samples.filter((s) => s.kind === k && s.server).map((s) => s.server!);
    return {
      requests: median(bs.map((b) => b.requests)),
      otherMs: median(bs.map((b) => b.other.ms)),
      blobRedirectsMs: median(bs.map((b) => b.blobRedirects.ms)),
      fillsMs: median(bs.map((b) => b.fills.ms)),
      blobBodiesMs: median(bs.map((b) => b.blobBodies.ms)),
    };
  };
  const server = { cold: serverMedians('cold'), warm: serverMedians('warm') };

  const pad = (s: string, n: number) => s.padStart(n);
  console.log('');
  console.log(`${'kind'.padEnd(8)}${pad('median ms', 11)}${pad('min ms', 9)}${pad('max ms', 9)}${pad('× direct', 10)}${pad('target', 9)}  met`);
  for (const k of KINDS) {
    const s = stats[k];
    const r = k === 'direct' ? '1.000' : ratios[k].toFixed(3);
    const t = k === 'direct' ? '' : `≤ ${TARGETS[k].toFixed(1)}×`;
    const m = k === 'direct' ? '' : met[k] ? 'yes' : 'NO';
    console.log(`${k.padEnd(8)}${pad(String(Math.round(s.medianMs)), 11)}${pad(String(Math.round(s.minMs)), 9)}${pad(String(Math.round(s.maxMs)), 9)}${pad(r, 10)}${pad(t, 9)}  ${m}`);
  }
  console.log('');
  console.log(`skopeo fixed overhead ≈ ${Math.round(median(overhead))} ms per run (included in every figure above)`);
  console.log('server time per pull, from its request log (medians; skopeo fetches blobs one after another into dir:, so these add up):');
  for (const k of ['cold', 'warm'] as const) {
    const s = server[k];
    console.log(
      `  ${k}: ${s.requests} requests; /v2/ + manifest ${Math.round(s.otherMs)} ms; blob GETs → 307 ${Math.round(s.blobRedirectsMs)} ms` +
        (k === 'cold' ? ` (of which upstream fills ${Math.round(s.fillsMs)} ms)` : '') +
        `; /_blobs/ bodies ${Math.round(s.blobBodiesMs)} ms`,
    );
  }

  const result = {
    benchmark: 'pull',
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    rounds: ROUNDS,
    git,
    host: { node: process.version, skopeo: skopeoVersion, platform: `${process.platform}-${process.arch}` },
    image: {
      name: IMAGE_NAME,
      tag: IMAGE_TAG,
      digest: image.digest,
      totalBytes,
      layerCount: layers.length,
      layers: layers.map((l) => ({ digest: l.digest, size: l.size })),
      config: image.blobs[0],
    },
    targets: { warmMaxRatio: TARGETS.warm, coldMaxRatio: TARGETS.cold },
    stats,
    ratios,
    met,
    skopeoOverheadMs: { median: Math.round(median(overhead) * 10) / 10, samples: overhead.map((x) => Math.round(x * 10) / 10) },
    primeMs: Math.round(primeMs * 10) / 10,
    serverMedians: server,
    samples,
    ...(keptLogs.length ? { logs: keptLogs.map((p) => p.slice(ROOT.length + 1)) } : {}),
  };
  writeResults('pull', stamp, result);
}

let failed = false;
try {
  await bounded('the benchmark', TOTAL_TIMEOUT_MS, main());
} catch (err) {
  failed = true;
  console.error(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
} finally {
  await bounded('cleanup', 30_000, cleanup()).catch((e: unknown) => {
    failed = true;
    console.error(String(e));
  });
}
process.exit(failed ? 1 : 0);
