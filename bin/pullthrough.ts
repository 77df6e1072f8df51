#!/usr/bin/env -S node --import tsx
/**
 * The pullthrough CLI: `npx pullthrough <command> [options]` (or `node --import tsx bin/pullthrough.ts …`; npm
 * scripts wrap the common ones, e.g. `npm run hash-password`, `npm run refresh`). `npx pullthrough --help` lists
 * the commands; each lives in its own file under `bin/commands/` (see bin/cli/program.ts). Commands that touch
 * the cache build the same runtime as `npm start`, from the same `PULLTHROUGH_*` settings.
 */
import { runCli } from './cli/program.js';

process.exitCode = await runCli(process.argv.slice(2));
