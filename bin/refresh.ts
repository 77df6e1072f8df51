/**
 * `npm run refresh -- [<name>[:<tag>] | <rule prefix>]`: re-checks cached tags against their upstreams now,
 * with the same code the scheduled refresh Lambda runs, on the backend the environment selects
 * (PULLTHROUGH_BACKEND etc., see shared/config.ts). No argument: one full scheduled pass (every tag due).
 * Prints the report as JSON (the last line of stdout; log lines come before it); exits 1 when any check
 * failed or a named target matched no cached tag.
 */
import { parseArgs } from 'node:util';
import { getRuntime } from '../shared/runtime.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { help: { type: 'boolean', short: 'h' }, 'max-seconds': { type: 'string' } },
});
if (values.help || positionals.length > 1) {
  process.stdout.write('usage: npm run refresh -- [<prefix>/<repository>[:<tag>] | <prefix>] [--max-seconds N]\n');
  process.exit(values.help ? 0 : 2);
}

const runtime = await getRuntime().catch((err: unknown) => {
  process.stderr.write(`refresh: cannot start: ${(err as Error).message}\n`);
  process.exit(2);
});
const maxSeconds = values['max-seconds'] === undefined ? undefined : Number(values['max-seconds']);
if (maxSeconds !== undefined && !(maxSeconds > 0)) {
  process.stderr.write('--max-seconds must be a positive number\n');
  process.exit(2);
}
const deadline = maxSeconds === undefined ? undefined : Date.now() + maxSeconds * 1000;
const arg = positionals[0];
try {
  let report;
  if (!arg) {
    report = await runtime.refresher.refreshDue({ deadline });
  } else {
    const colon = arg.indexOf(':'); // names cannot contain ':', tags cannot contain '/'
    const target = colon === -1 ? { name: arg } : { name: arg.slice(0, colon), tag: arg.slice(colon + 1) };
    report = await runtime.refresher.refreshTarget(target, { deadline });
  }
  if (report.moved > 0) runtime.metrics.publishStoredMetrics();
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (arg && report.checked === 0) {
    process.stderr.write(`refresh: no cached tag matches ${arg}\n`);
    process.exitCode = 1;
  } else {
    process.exitCode = report.errors > 0 ? 1 : 0;
  }
} catch (err) {
  process.stderr.write(`refresh failed: ${(err as Error).message}\n`);
  process.exitCode = 1;
} finally {
  runtime.close();
}
