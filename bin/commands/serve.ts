/**
 * `pullthrough serve [--port N] [--host ADDR]`: the local server, exactly what `npm start` runs (bin/server.ts),
 * with `--port` / `--host` as shorthands for `PULLTHROUGH_PORT` / `PULLTHROUGH_HOST`.
 */
import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('serve')
    .description('run the cache as a local HTTP server (what npm start runs)')
    .option('--port <port>', 'listen port (PULLTHROUGH_PORT, default 5000)')
    .option('--host <address>', 'listen address (PULLTHROUGH_HOST, default 127.0.0.1)')
    .action(async (opts: { port?: string; host?: string }) => {
      if (opts.port !== undefined) process.env.PULLTHROUGH_PORT = opts.port;
      if (opts.host !== undefined) process.env.PULLTHROUGH_HOST = opts.host;
      // The server module starts listening when loaded and runs until SIGTERM/SIGINT.
      await import('../server.js');
    });
}
