/**
 * The `pullthrough` CLI program (commander): one file per subcommand under `bin/commands/`, each exporting
 * `register(program)`, which adds its command (arguments, options, one-line description, action). The files are
 * found by listing that directory, so adding a subcommand is adding one file. Help lists every subcommand with its
 * description; `pullthrough help <command>` or `<command> --help` shows its options.
 *
 * Exit codes: 0 success; 1 the command ran and failed (or found problems: `verify`, `refresh`); 2 bad usage
 * (unknown command or option, a bad argument value: {@link UsageError}) or a runtime that cannot start.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command, CommanderError } from 'commander';

/** A bad argument value found by an action (exit code 2 with the command's usage, like commander's own errors). */
export class UsageError extends Error {}

/** What each file in `bin/commands/` exports. */
export interface CommandModule {
  /** Adds the subcommand to `program`. Its action sets `process.exitCode` when it is not 0. */
  register(program: Command): void;
}

const COMMANDS_DIR = join(import.meta.dirname, '..', 'commands');

/** Builds the program with every subcommand of `bin/commands/` (in file-name order). */
export async function buildProgram(): Promise<Command> {
  const program = new Command('pullthrough')
    .description('pullthrough, a container-registry pull-through cache')
    .usage('<command> [options]')
    .helpCommand('help [command]', 'show the options of a command')
    // Titles like git's ("usage: …"), one line per command whatever the terminal; every subcommand inherits these.
    .configureHelp({ styleTitle: (title) => title.toLowerCase(), sortSubcommands: true, helpWidth: 160 })
    .showHelpAfterError()
    .exitOverride();
  const files = readdirSync(COMMANDS_DIR).filter((f) => /^[a-z0-9-]+\.ts$/.test(f)).sort();
  for (const file of files) {
    const mod = (await import(pathToFileURL(join(COMMANDS_DIR, file)).href)) as CommandModule;
    mod.register(program);
  }
  return program;
}

/** Runs the CLI on `argv` (without node and the script); resolves with the exit code. */
export async function runCli(argv: string[]): Promise<number> {
  const program = await buildProgram();
  if (argv.length === 0) {
    process.stdout.write(program.helpInformation());
    return 2;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version output end the program through here too.
      return err.code === 'commander.helpDisplayed' || err.code === 'commander.help' || err.code === 'commander.version' ? 0 : 2;
    }
    const name = program.args[0] ?? '';
    const sub = program.commands.find((c) => c.name() === name);
    process.stderr.write(`pullthrough ${name}: ${(err as Error).message}\n`);
    if (err instanceof UsageError) {
      if (sub) process.stderr.write(`usage: pullthrough ${sub.name()} ${sub.usage()}\n`);
      return 2;
    }
    return 1;
  }
}

/** Reads all of stdin (a password piped in, or typed and ended with Ctrl-D). */
export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}
