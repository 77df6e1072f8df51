/**
 * `pullthrough verify [--repair] [--json]`: re-hashes every stored blob and manifest against its digest and lists
 * the damaged ones; `--repair` drops them, so the next pull refetches them from the upstream. Exits 1 when damage
 * was found and not repaired.
 */
import type { Command } from 'commander';
import { formatBytes, printJson } from '../cli/format.js';
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
          process.stdout.write(`checked ${report.checkedBlobs} blobs (${formatBytes(report.checkedBytes)}) and ${report.checkedManifests} manifests\n`);
          for (const d of report.damagedBlobs) process.stdout.write(`damaged blob ${d}${report.repaired ? ' (dropped)' : ''}\n`);
          for (const m of report.damagedManifests) process.stdout.write(`damaged manifest ${m.name}@${m.digest}${report.repaired ? ' (dropped)' : ''}\n`);
        }
        const damaged = report.damagedBlobs.length + report.damagedManifests.length;
        if (damaged > 0 && !report.repaired) process.exitCode = 1;
      });
    });
}
