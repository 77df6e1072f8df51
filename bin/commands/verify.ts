/**
 * `pullthrough verify [--repair] [--json]`: re-hashes every stored blob and manifest against its digest and lists
 * the damaged ones; `--repair` drops them, so the next pull refetches them from the upstream. Exits 1 when damage
 * was found, repaired or not (README: 1 = problems found), 0 when everything matched.
 */
import type { Command } from 'commander';
import { count, formatBytes, printJson } from '../cli/format.js';
import { withRuntime } from '../cli/runtime.js';

export function register(program: Command): void {
  program
    .command('verify')
    .description('re-hash stored blobs and manifests; --repair drops damaged ones')
    .option('--repair', 'drop what does not match its digest (the next pull refetches it)')
    .option('--json', 'print the report as JSON (the last line of stdout)')
    .action(async (opts: { repair?: boolean; json?: boolean }) => {
      await withRuntime('verify', async (runtime) => {
        const report = await runtime.lifecycle.verify({ repair: opts.repair ?? false });
        if (opts.json) printJson(report);
        else {
          process.stdout.write(`checked ${count(report.checkedBlobs, 'blob')} (${formatBytes(report.checkedBytes)}) and ${count(report.checkedManifests, 'manifest')}\n`);
          for (const d of report.damagedBlobs) process.stdout.write(`damaged blob ${d}${report.repaired ? ' (dropped)' : ''}\n`);
          for (const m of report.damagedManifests) process.stdout.write(`damaged manifest ${m.name}@${m.digest}${report.repaired ? ' (dropped)' : ''}\n`);
        }
        // Damage found is a problem (exit 1) whether or not --repair dropped it: storage changed bytes it had
        // stored, which an operator (or the script running verify) should hear of.
        const damaged = report.damagedBlobs.length + report.damagedManifests.length;
        if (damaged > 0) process.exitCode = 1;
      });
    });
}
