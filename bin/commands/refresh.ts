/**
 * `pullthrough refresh [<name>[:<tag>] | <rule prefix>] [--max-seconds N]` (also `npm run refresh -- …`):
 * re-checks cached tags against their upstreams now, with the code the scheduled refresh Lambda runs. No
 * argument: one scheduled pass (every tag due, then the config's `prefetch:` list). Prints the report as JSON
 * (the last line of stdout; log lines come before it); exits 1 when any check or prefetch failed or a named target
 * matched no cached tag. Moves are logged (`tag-moved`) and recorded on each tag; the `TagMoved` CloudWatch
 * metric is the refresh Lambda's (EMF in its log), never written to stdout here.
 */
import { InvalidArgumentError, type Command } from 'commander';
import type { RefreshReport } from '../../shared/registry/refresh.js';
import { runScheduledPass, type ScheduledReport } from '../../shared/registry/scheduled.js';
import { positiveSeconds, withRuntime } from '../cli/runtime.js';

export function register(program: Command): void {
  program
    .command('refresh')
    .description('re-check cached tags against their upstreams now')
    .argument('[target]', '<prefix>/<repository>[:<tag>] or a rule prefix; none: every tag due')
    .option('--max-seconds <n>', 'stop starting checks after this many seconds', (v) => {
      try {
        return positiveSeconds(v);
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message);
      }
    })
    .action(async (arg: string | undefined, opts: { maxSeconds?: number }) => {
      await withRuntime('refresh', async (runtime) => {
        const deadline = opts.maxSeconds === undefined ? undefined : Date.now() + opts.maxSeconds * 1000;
        let report: RefreshReport & Partial<ScheduledReport>;
        if (!arg) {
          report = await runScheduledPass(runtime, { deadline });
        } else {
          const colon = arg.indexOf(':'); // names cannot contain ':', tags cannot contain '/'
          const target = colon === -1 ? { name: arg } : { name: arg.slice(0, colon), tag: arg.slice(colon + 1) };
          report = await runtime.refresher.refreshTarget(target, { deadline });
        }
        process.stdout.write(`${JSON.stringify(report)}\n`);
        if (arg && report.checked === 0) {
          process.stderr.write(`refresh: no cached tag matches ${arg}\n`);
          process.exitCode = 1;
        } else if (report.errors > 0 || (report.prefetch?.failed ?? 0) > 0) {
          process.exitCode = 1;
        }
      });
    });
}
