/**
 * The pullthrough CLI run inside the test process (bin/cli/program.ts's `runCli`, what `bin/pullthrough.ts`
 * calls), so a test does not pay a Node + tsx start per command (seconds each on a loaded machine): the same
 * commander program and command actions, with `env` set for the call, `input` as stdin, and stdout/stderr captured.
 * Calls are serialised (they swap process-wide state: env, stdin, the output streams' write, `process.exitCode`).
 * What only a real process shows (a signal, a real pipe, the shebang) stays a spawn in the tests.
 */
import { Readable } from 'node:stream';
import { runCli } from '../../bin/cli/program.js';

/** What a CLI run gave: its exit code and output. */
export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
}

let queue: Promise<unknown> = Promise.resolve();

/** Runs `pullthrough <args>` in this process (see the file header). */
export function runCliInProcess(args: string[], opts: { env?: Record<string, string>; input?: string } = {}): Promise<CliResult> {
  const run = queue.then(() => runOnce(args, opts));
  queue = run.catch(() => undefined);
  return run;
}

async function runOnce(args: string[], opts: { env?: Record<string, string>; input?: string }): Promise<CliResult> {
  const env = { PULLTHROUGH_LOG_LEVEL: 'WARN', ...opts.env };
  const savedEnv = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  const stdinDescriptor = Object.getOwnPropertyDescriptor(process, 'stdin')!;
  const writes = { stdout: process.stdout.write, stderr: process.stderr.write };
  const out = { stdout: '', stderr: '' };
  const capture = (stream: 'stdout' | 'stderr') =>
    ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      out[stream] += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
      const done = rest.find((r) => typeof r === 'function') as (() => void) | undefined;
      done?.();
      return true;
    }) as typeof process.stdout.write;
  Object.assign(process.env, env);
  Object.defineProperty(process, 'stdin', { value: Readable.from([Buffer.from(opts.input ?? '')]), configurable: true, enumerable: true });
  process.stdout.write = capture('stdout');
  process.stderr.write = capture('stderr');
  process.exitCode = undefined;
  try {
    const status = await runCli(args);
    return { status, ...out };
  } finally {
    process.stdout.write = writes.stdout;
    process.stderr.write = writes.stderr;
    process.exitCode = undefined;
    Object.defineProperty(process, 'stdin', stdinDescriptor);
    for (const [k, v] of Object.entries(savedEnv)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}
