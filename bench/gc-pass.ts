/**
 * One GC pass in a fresh process for bench/gc-scale.ts, on the runtime the environment selects (as
 * `npx pullthrough gc` builds it), counting the store requests it makes: HTTP requests to DynamoDB (by
 * `X-Amz-Target` operation) and S3 (by method and query), SQLite statements executed and filesystem calls. Prints
 * one JSON line: time, peak RSS, the pass's report and the counts.
 */
import http from 'node:http';
import { promises as fsp } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

const counts: Record<string, number> = {};
const count = (k: string) => void (counts[k] = (counts[k] ?? 0) + 1);

// HTTP: every request the AWS SDK sends (its node:http handler), before the SDK is loaded.
const originalRequest = http.request;
(http as { request: unknown }).request = ((...args: Parameters<typeof http.request>) => {
  const opts = args[0] as http.RequestOptions;
  const target = (opts.headers as Record<string, string> | undefined)?.['x-amz-target'] ?? (opts.headers as Record<string, string> | undefined)?.['X-Amz-Target'];
  if (target) count(`dynamodb:${target.split('.').pop()}`);
  else count(`s3:${opts.method} ${/list-type=2/.test(String(opts.path)) ? 'ListObjectsV2' : String(opts.path).includes('?') ? 'query' : 'object'}`);
  return originalRequest(...args);
}) as typeof http.request;
// Filesystem calls the blob sweep makes.
for (const m of ['stat', 'rename', 'rm', 'readdir', 'utimes', 'open', 'link'] as const) {
  const original = fsp[m] as (...a: unknown[]) => unknown;
  (fsp as unknown as Record<string, unknown>)[m] = (...a: unknown[]) => (count(`fs:${m}`), original.apply(fsp, a));
}
syncBuiltinESMExports();

// SQLite: statements executed (better-sqlite3's Statement methods).
if (process.env.PULLTHROUGH_BACKEND !== 'aws') {
  const { default: Database } = await import('better-sqlite3');
  const probe = new Database(':memory:');
  const proto = Object.getPrototypeOf(probe.prepare('SELECT 1')) as Record<string, (...a: unknown[]) => unknown>;
  for (const m of ['run', 'get', 'all']) {
    const original = proto[m];
    proto[m] = function (this: unknown, ...a: unknown[]) {
      count(`sqlite:${m}`);
      return original.apply(this, a);
    };
  }
  probe.close();
}

const { getRuntime } = await import('../shared/runtime.js');
const runtime = await getRuntime();
const before = { ...counts };
const started = performance.now();
const report = await runtime.lifecycle.gc();
const ms = Math.round(performance.now() - started);
const made = Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, v]) => (v as number) > 0));
runtime.close();
process.stdout.write(`${JSON.stringify({ ms, peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024), report, requests: made })}\n`);
