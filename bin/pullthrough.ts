#!/usr/bin/env -S node --import tsx
/**
 * The pullthrough CLI: `npx pullthrough <command> [options]` (or `node --import tsx bin/pullthrough.ts …`; npm
 * scripts wrap the common ones, e.g. `npm run hash-password`, `npm run refresh`). `npx pullthrough --help` lists
 * the commands; each lives in its own file under `bin/commands/` (see bin/cli/program.ts). Commands that touch
 * the cache build the same runtime as `npm start`, from the same `PULLTHROUGH_*` settings.
 */
import { runCli } from './cli/program.js';

// A reader that goes away (`npx pullthrough ls | head -1`) ends the output: stop quietly, as Unix tools do, instead
// of an unhandled EPIPE with a stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

process.exitCode = await runCli(process.argv.slice(2));
