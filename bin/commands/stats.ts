/**
 * `pullthrough stats [--json]`: per rule, what the cache did — requests, hit ratio, upstream requests and bytes,
 * bytes served from the cache — over the last 24 hours and since counting started, and the bytes it stores (as
 * the last complete gc pass measured them). Read from the counters kept in the index (shared/registry/stats.ts),
 * so it needs neither CloudWatch nor Prometheus, and works beside a running server (which adds its counts once a
 * minute) or on DynamoDB with `PULLTHROUGH_BACKEND=aws`.
 */
import type { Command } from 'commander';
import { readStats, type RuleStats } from '../../shared/registry/stats.js';
import { storedBytesByRule } from '../../shared/runtime-metrics.js';
import { formatBytes, formatTime, printJson, table } from '../cli/format.js';
import { withRuntime } from '../cli/runtime.js';

const ratio = (r: number | undefined) => (r === undefined ? '-' : `${(r * 100).toFixed(1)}%`);

function rows(stats: RuleStats[], window: 'lastDay' | 'sinceStart'): string[][] {
  return stats.map((s) => {
    const c = s[window];
    return [s.rule, String(c.requests), ratio(c.hitRatio), String(c.errors), String(c.upstreamRequests), formatBytes(c.upstreamBytes), formatBytes(c.servedBytes), s.storedBytes === undefined ? '-' : formatBytes(s.storedBytes)];
  });
}

export function register(program: Command): void {
  program
    .command('stats')
    .description('show requests, hit ratio and upstream traffic per rule')
    .option('--json', 'print JSON ({at, rules}) instead of tables')
    .action(async (opts: { json?: boolean }) => {
      await withRuntime('stats', async (runtime) => {
        const at = Date.now();
        const stats = await readStats(runtime.counters, runtime.config.rules.map((r) => r.prefix), at, (await storedBytesByRule(runtime.lifecycle)) ?? {});
        if (opts.json) return printJson({ at, rules: stats });
        const header = ['RULE', 'REQUESTS', 'HIT RATIO', 'ERRORS', 'UPSTREAM REQUESTS', 'UPSTREAM BYTES', 'SERVED BYTES', 'STORED'];
        const since = Math.min(...stats.map((s) => s.sinceStart.since ?? at));
        process.stdout.write(`last 24 hours (to ${formatTime(at)} UTC)\n${table(header, rows(stats, 'lastDay'))}\n`);
        process.stdout.write(`since ${formatTime(since)} UTC\n${table(header, rows(stats, 'sinceStart'))}`);
        process.stdout.write('\nhit ratio: manifest and blob requests served from the cache; stored: as the last complete gc measured\n');
      });
    });
}
