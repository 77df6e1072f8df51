#!/usr/bin/env -S node --import tsx
/**
 * The pullthrough CLI: `node --import tsx bin/pullthrough.ts <command> [options]` (npm scripts wrap the
 * common ones, e.g. `npm run hash-password`). Commands:
 * - `hash-password`: reads a password from stdin, prints its scrypt hash for `auth.users[].passwordHash`;
 * - `generate-token-key`: prints a new ES256 signing key (JWK) for `PULLTHROUGH_TOKEN_KEY`, optionally in
 *   front of the current key set (`--previous FILE`), which is how a key is rotated;
 * - `login-password`: prints a password for auth mode `iam` (user `AWS`), made from your AWS credentials, like
 *   `aws ecr get-login-password`.
 * A command is one entry of {@link COMMANDS}: a summary, a usage line and `run(args)`, which parses its own
 * options with node:util `parseArgs` and resolves with the exit code.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { hashPassword } from '../shared/auth/passwords.js';
import { generateSigningJwk, parseKeySet } from '../shared/auth/keys.js';
import { DEFAULT_EXPIRES_SECONDS, MAX_EXPIRES_SECONDS } from '../shared/auth/iam.js';
import { createLoginPassword } from '../shared/auth/login-password.js';
import { readEnvironment } from '../shared/config.js';

/** One subcommand. */
interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<number>;
}

/** Reads all of stdin (a password piped in, or typed and ended with Ctrl-D). */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

const COMMANDS: Record<string, Command> = {
  'hash-password': {
    summary: 'print the scrypt hash of a password read from stdin (for auth.users[].passwordHash)',
    usage: 'hash-password [--password-stdin]   e.g. printf %s "$PASSWORD" | npm run -s hash-password',
    async run(args) {
      // --password-stdin is the only way in (and the default); accepted for docker-login-like muscle memory.
      parseArgs({ args, options: { 'password-stdin': { type: 'boolean' } }, strict: true, allowPositionals: false });
      if (process.stdin.isTTY) process.stderr.write('Type the password, then Enter and Ctrl-D:\n');
      // One trailing line break is the terminal's or echo's, not the password's.
      const password = (await readStdin()).replace(/\r?\n$/, '');
      if (password === '') {
        process.stderr.write('hash-password: empty password on stdin\n');
        return 1;
      }
      process.stdout.write(`${await hashPassword(password)}\n`);
      return 0;
    },
  },
  'generate-token-key': {
    summary: 'print a new ES256 token signing key (JWK); with --previous FILE, the rotated set [new, ...previous public keys]',
    usage: 'generate-token-key [--previous FILE|-]',
    async run(args) {
      const { values } = parseArgs({ args, options: { previous: { type: 'string' } }, strict: true, allowPositionals: false });
      const key = await generateSigningJwk();
      if (values.previous === undefined) {
        process.stdout.write(`${JSON.stringify(key)}\n`);
        return 0;
      }
      const text = values.previous === '-' ? await readStdin() : readFileSync(values.previous, 'utf8');
      await parseKeySet(text, values.previous === '-' ? 'stdin' : values.previous); // refuse to extend a broken set
      const parsed = JSON.parse(text) as unknown;
      // Previous keys only verify from now on: their private parts (`d`) are dropped.
      const previous = (Array.isArray(parsed) ? parsed : [parsed]).map((k: Record<string, unknown>) => Object.fromEntries(Object.entries(k).filter(([f]) => f !== 'd')));
      process.stdout.write(`${JSON.stringify([key, ...previous])}\n`);
      return 0;
    },
  },
  'login-password': {
    summary: 'print a password for auth mode iam (username AWS) from your AWS credentials (SDK default chain), like aws ecr get-login-password',
    usage: `login-password [--region R] [--expires-in SECONDS]   e.g. … login-password --region eu-west-1 | docker login -u AWS --password-stdin HOST`,
    async run(args) {
      const { values } = parseArgs({
        args,
        options: { region: { type: 'string' }, 'expires-in': { type: 'string' }, 'sts-endpoint': { type: 'string' } },
        strict: true,
        allowPositionals: false,
      });
      const env = readEnvironment();
      // The region must be the cache's auth.iam.region (default us-east-1): the password names its STS endpoint.
      const region = values.region ?? env.awsRegion ?? 'us-east-1';
      const expiresInSeconds = Number(values['expires-in'] ?? DEFAULT_EXPIRES_SECONDS);
      if (!Number.isInteger(expiresInSeconds) || expiresInSeconds < 1 || expiresInSeconds > MAX_EXPIRES_SECONDS) {
        throw new Error(`--expires-in must be 1..${MAX_EXPIRES_SECONDS} seconds`);
      }
      // --sts-endpoint / PULLTHROUGH_STS_ENDPOINT: tests against an STS stand-in only.
      const endpoint = values['sts-endpoint'] ?? env.stsEndpoint;
      process.stdout.write(`${await createLoginPassword({ region, expiresInSeconds, endpoint })}\n`);
      return 0;
    },
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  return [
    'usage: pullthrough <command> [options]',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}\n  ${' '.repeat(width)}  ${c.usage}`),
    '',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`pullthrough: unknown command ${JSON.stringify(name)}\n\n${usage()}`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    process.stderr.write(`pullthrough ${name}: ${(err as Error).message}\n  ${command.usage}\n`);
    return 2;
  }
}

process.exitCode = await main(process.argv.slice(2));
