/**
 * `pullthrough generate-token-key [--previous FILE|-]`: prints a new ES256 signing key (JWK) for
 * `PULLTHROUGH_TOKEN_KEY`, optionally in front of the current key set, which is how a key is rotated.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { generateSigningJwk, parseKeySet } from '../../shared/auth/keys.js';
import { readStdin } from '../cli/program.js';

export function register(program: Command): void {
  program
    .command('generate-token-key')
    .description('print a new ES256 token signing key (JWK), or with --previous a rotated key set')
    .option('--previous <file>', 'the current key set (a file, or - for stdin); its keys are kept for verifying only')
    .action(async (opts: { previous?: string }) => {
      const key = await generateSigningJwk();
      if (opts.previous === undefined) {
        process.stdout.write(`${JSON.stringify(key)}\n`);
        return;
      }
      const text = opts.previous === '-' ? await readStdin() : readFileSync(opts.previous, 'utf8');
      await parseKeySet(text, opts.previous === '-' ? 'stdin' : opts.previous); // refuse to extend a broken set
      const parsed = JSON.parse(text) as unknown;
      // Previous keys only verify from now on: their private parts (`d`) are dropped.
      const previous = (Array.isArray(parsed) ? parsed : [parsed]).map((k: Record<string, unknown>) => Object.fromEntries(Object.entries(k).filter(([f]) => f !== 'd')));
      process.stdout.write(`${JSON.stringify([key, ...previous])}\n`);
    });
}
