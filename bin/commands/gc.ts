/**
 * `pullthrough gc [--dry-run] [--json] [--max-seconds N]`: one garbage-collection pass over the store the
 * `PULLTHROUGH_*` settings name (the same pass the scheduled `gc` function runs on AWS; design in
 * shared/registry/lifecycle/gc.ts). Prints what it evicted and deleted, stored bytes per rule and any budget still
 * exceeded (by kept content alone, or with more to evict than the pass had time for); with `--json` the report is the last line of stdout. A pass stopped by
 * `--max-seconds` (or lifecycle.maxRunSeconds) saves where it was; the next one resumes.
 */
import { InvalidArgumentError, type Command } from 'commander';
import type { GcReport } from '../../shared/registry/lifecycle/index.js';
import { count, formatBytes, printJson, table } from '../cli/format.js';
import { positiveSeconds, withRuntime } from '../cli/runtime.js';

/** The report in words; a dry run says what it would do, in the conditional throughout. */
function summary(r: GcReport): string {
  const [evict, del, remove] = r.dryRun ? ['would evict', 'would delete', 'would remove'] : ['evicted', 'deleted', 'removed'];
  const lines = [
    `${evict} ${count(r.evictedTags, 'tag')}, ${del} ${count(r.deletedManifests, 'manifest')} and ${count(r.deletedBlobs, 'blob')} (${formatBytes(r.freedBytes)})${r.dryRun ? ' [dry run]' : ''}`,
    `${remove} ${count(r.removedObjects, 'storage object')} past the grace period; ${formatBytes(r.pendingBytes)} waiting for it`,
    `${remove} ${count(r.removedTempFiles, 'temp file')} of writes killed mid-way (${formatBytes(r.removedTempBytes)})`,
    `stored: ${formatBytes(r.storedBytes)}${r.complete ? '' : ' (pass not finished: the next gc resumes it)'}`,
  ];
  const rules = Object.entries(r.rules).map(([rule, u]) => [rule || '(no rule)', formatBytes(u.storedBytes), u.maxBytes === undefined ? '-' : formatBytes(u.maxBytes)]);
  const out = [lines.join('\n'), '\n', rules.length ? table(['RULE', 'STORED', 'BUDGET'], rules) : ''];
  for (const o of r.overBudget) {
    const why = o.reason === 'next-pass'
      ? 'more to evict than this pass had time for: the next gc goes on'
      : 'kept content alone (keepTags, or pulled recently) exceeds it';
    out.push(`over budget: ${o.scope} stores ${formatBytes(o.storedBytes)} of ${formatBytes(o.maxBytes)}: ${why}\n`);
  }
  return out.join('');
}

export function register(program: Command): void {
  program
    .command('gc')
    .description('one garbage-collection pass: expiry, budgets, unreferenced blobs')
    .option('--dry-run', 'report what would go, delete nothing')
    .option('--json', 'print the report as JSON (the last line of stdout)')
    .option('--max-seconds <n>', 'stop after this many seconds (the next gc resumes)', (v) => {
      try {
        return positiveSeconds(v);
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message);
      }
    })
    .action(async (opts: { dryRun?: boolean; json?: boolean; maxSeconds?: number }) => {
      await withRuntime('gc', async (runtime) => {
        const deadline = opts.maxSeconds === undefined ? undefined : Date.now() + opts.maxSeconds * 1000;
        const report = await runtime.lifecycle.gc({ dryRun: opts.dryRun ?? false, deadline });
        if (opts.json) printJson(report);
        else process.stdout.write(summary(report));
      });
    });
}
