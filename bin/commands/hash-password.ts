/** `pullthrough hash-password`: reads a password from stdin, prints its scrypt hash for `auth.users[].passwordHash`. */
import type { Command } from 'commander';
import { hashPassword } from '../../shared/auth/passwords.js';
import { readStdin } from '../cli/program.js';

export function register(program: Command): void {
  program
    .command('hash-password')
    .description('print the scrypt hash of a password from stdin (auth.users[].passwordHash)')
    // The only way in (and the default); accepted for docker-login-like muscle memory.
    .option('--password-stdin', 'read the password from stdin (the default)')
    .addHelpText('after', '\nexample: printf %s "$PASSWORD" | npx pullthrough hash-password')
    .action(async () => {
      if (process.stdin.isTTY) process.stderr.write('Type the password, then Enter and Ctrl-D:\n');
      // One trailing line break is the terminal's or echo's, not the password's.
      const password = (await readStdin()).replace(/\r?\n$/, '');
      if (password === '') {
        process.stderr.write('hash-password: empty password on stdin\n');
        process.exitCode = 1;
        return;
      }
      process.stdout.write(`${await hashPassword(password)}\n`);
    });
}
