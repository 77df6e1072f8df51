/**
 * Fill benchmark (`npx tsx bench/fill-1gib.ts`): writes one 1 GiB blob through each blob store and samples
 * this process's resident set size (`process.memoryUsage.rss()`) every 100 ms, to show that a fill's memory is
 * bounded by the part size, not the blob size. Target: peak RSS < 300 MB.
 *
 *  - filesystem: `openFsBlobStore` into a temp directory (first, so the S3 phase's buffers don't inflate it).
 *  - S3:         `createS3BlobStore` into s3rver on loopback, twice in the same run: with the defaults (parts sized
 *                for the blob: 5 MiB for 1 GiB, 4 uploading at once) and with the settings before them (fixed
 *                8 MiB parts, 2 at once), so the fill MB/s compare on the same machine state. s3rver runs in its
 *                own process, so its memory is NOT in the peak; its RSS is sampled from /proc and shown apart.
 *
 * The blob is a deterministic pseudo-random stream (AES-256-CTR keystream, fixed key) generated on the fly
 * in 1 MiB chunks; its digest is computed in a first pass that stores nothing. Environment: FILL_MIB (blob
 * size in MiB, default 1024), FILL_TIMEOUT_MS (bound on each fill, default 600 000).
 */
import { createCipheriv, createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Digest } from '../shared/oci/digest.js';
import { openFsBlobStore } from '../shared/store/fs-blob-store.js';
import type { BlobRecords, BlobStore } from '../shared/store/ports.js';
import { createS3BlobStore, DEFAULT_QUEUE_SIZE, partSizeFor } from '../shared/store/s3-blob-store.js';
import { memoryBlobRecords } from '../test/support/memory-blob-records.js';
import { createBucket, s3ClientFor, startS3rver } from '../test/support/s3rver.js';

const MiB = 1024 * 1024;
const BLOB_MIB = Number(process.env.FILL_MIB ?? 1024);
const FILL_TIMEOUT_MS = Number(process.env.FILL_TIMEOUT_MS ?? 600_000);
const TARGET_PEAK_MB = 300;
const mb = (bytes: number) => Math.round((bytes / 1e6) * 10) / 10;

/** The benchmark blob: `BLOB_MIB` chunks of 1 MiB from a fixed-key AES-256-CTR keystream (same bytes every run). */
function blobStream(): Readable {
  const cipher = createCipheriv('aes-256-ctr', Buffer.alloc(32, 7), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(MiB);
  let produced = 0;
  return new Readable({
    highWaterMark: MiB,
    read() {
      if (produced === BLOB_MIB) return void this.push(null);
      produced++;
      this.push(cipher.update(zeros));
    },
  });
}

/** RSS of another process in bytes (Linux /proc), or undefined. */
function rssOf(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

interface Result {
  store: string;
  seconds: number;
  baselineRssMB: number;
  peakRssMB: number;
  otherPeakRssMB?: number;
}

/** Fills the blob into `store`, sampling RSS every 100 ms (and `otherPid`'s when given). */
async function measure(label: string, store: BlobStore, digest: Digest, otherPid?: number): Promise<Result> {
  const baseline = process.memoryUsage.rss();
  let peak = baseline;
  let otherPeak = 0;
  const sample = () => {
    peak = Math.max(peak, process.memoryUsage.rss());
    if (otherPid) otherPeak = Math.max(otherPeak, rssOf(otherPid) ?? 0);
  };
  const timer = setInterval(sample, 100);
  const started = performance.now();
  let deadline: NodeJS.Timeout | undefined;
  try {
    const { size } = await Promise.race([
      store.write(digest, blobStream(), BLOB_MIB * MiB),
      new Promise<never>((_, reject) => {
        deadline = setTimeout(() => reject(new Error(`${label}: fill did not finish within ${FILL_TIMEOUT_MS} ms`)), FILL_TIMEOUT_MS);
      }),
    ]);
    if (size !== BLOB_MIB * MiB) throw new Error(`${label}: wrote ${size} bytes`);
  } finally {
    clearTimeout(deadline);
    clearInterval(timer);
  }
  const seconds = (performance.now() - started) / 1000;
  sample();
  const stat = await store.stat(digest);
  if (stat?.size !== BLOB_MIB * MiB) throw new Error(`${label}: stat after the fill says ${JSON.stringify(stat)}`);
  return {
    store: label,
    seconds: Math.round(seconds * 100) / 100,
    baselineRssMB: mb(baseline),
    peakRssMB: mb(peak),
    ...(otherPid ? { otherPeakRssMB: mb(otherPeak) } : {}),
  };
}

const hash = createHash('sha256');
const t0 = performance.now();
await pipeline(blobStream(), async function* (chunks: AsyncIterable<Buffer>) {
  for await (const c of chunks) hash.update(c);
});
const digest = `sha256:${hash.digest('hex')}` as Digest;
console.log(`blob: ${BLOB_MIB} MiB, ${digest} (digest pass ${((performance.now() - t0) / 1000).toFixed(2)} s, nothing stored)`);

const results: Result[] = [];
const work = mkdtempSync(join(tmpdir(), 'pt-fill-bench-'));
try {
  // The filesystem first: the S3 client's buffers would otherwise inflate its baseline.
  const fsStore = await openFsBlobStore(join(work, 'fs'));
  results.push(await measure('filesystem', fsStore, digest));
  rmSync(join(work, 'fs'), { recursive: true, force: true });

  const s3rver = await startS3rver({ directory: join(work, 's3rver') });
  const client = s3ClientFor(s3rver.endpoint);
  try {
    await createBucket(client, 'bench');
    const store = createS3BlobStore({ client, bucket: 'bench', records: memoryBlobRecords() });
    results.push(await measure(`S3 via s3rver (${partSizeFor(BLOB_MIB * MiB) / MiB} MiB parts, queue ${DEFAULT_QUEUE_SIZE})`, store, digest, s3rver.pid));
    const before = createS3BlobStore({ client, bucket: 'bench', records: memoryBlobRecords(), partSizeBytes: 8 * MiB, queueSize: 2 });
    results.push(await measure('S3 via s3rver (before: 8 MiB parts, queue 2)', before, digest, s3rver.pid));
  } finally {
    client.destroy();
    await s3rver.stop();
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

console.log('');
console.log('store'.padEnd(44), 'time s'.padStart(8), 'MiB/s'.padStart(8), 'RSS before MB'.padStart(14), 'peak RSS MB'.padStart(12));
for (const r of results) {
  console.log(
    r.store.padEnd(44),
    r.seconds.toFixed(2).padStart(8),
    (BLOB_MIB / r.seconds).toFixed(0).padStart(8),
    r.baselineRssMB.toFixed(1).padStart(14),
    r.peakRssMB.toFixed(1).padStart(12),
  );
}
const [, s3, s3Before] = results;
console.log('');
console.log(`S3 fill: ${(BLOB_MIB / s3.seconds).toFixed(0)} MiB/s with the defaults = ${(s3Before.seconds / s3.seconds).toFixed(2)}× the settings before them, same run.`);
console.log(`Peak RSS is this (filling) process only, sampled every 100 ms; target < ${TARGET_PEAK_MB} MB.`);
console.log(`s3rver runs in its own process and is NOT counted above (its own peak RSS: ${s3.otherPeakRssMB} MB).`);
const ok = results.every((r) => r.peakRssMB < TARGET_PEAK_MB);
console.log(ok ? 'target met' : 'TARGET MISSED');
process.exitCode = ok ? 0 : 1;
