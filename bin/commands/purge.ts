/**
 * `pullthrough purge <name>[:<tag>|@<digest>] | <rule prefix> [--json]`: removes a tag, a manifest (and the tags
 * pointing at it), a repository, or everything under a rule, then the blobs nothing else references; the next pull
 * refills from the upstream. The bytes leave storage with the first `gc` after the grace period. Exits 1 when the
 * target matched nothing.
 */
import type { Command } from 'commander';
import { count, formatBytes, printJson } from '../cli/format.js';
import { UsageError } from '../cli/program.js';
import { withRuntime } from '../cli/runtime.js';

export function register(program: Command): void {
  program
    .command('purge')
    .description('remove a tag, a digest, a repository or a whole rule from the cache')
    .argument('<target>', '<prefix>/<repository>[:<tag>|@<digest>], or a bare rule prefix')
    .option('--json', 'print the report as JSON (the last line of stdout)')
    .action(async (target: string, opts: { json?: boolean }) => {
      await withRuntime('purge', async (runtime) => {
        let report;
        try {
          report = await runtime.lifecycle.purge(target);
        } catch (err) {
          if (err instanceof RangeError) throw new UsageError(err.message);
          throw err;
        }
        if (opts.json) printJson(report);
        else {
          process.stdout.write(
            `purged ${target}: ${count(report.evictedTags, 'tag')}, ${count(report.deletedManifests, 'manifest')}, ${count(report.deletedBlobs, 'blob')} ` +
              `(${formatBytes(report.freedBytes)}) from ${count(report.repositories, 'repository', 'repositories')}\n`,
          );
        }
        if (report.repositories === 0) {
          process.stderr.write(`purge: nothing cached matches ${target}\n`);
          process.exitCode = 1;
        }
      });
    });
}
