/**
 * One Lambda execution environment of the local Lambda service (./lambda-runtime.ts): a plain Node process
 * running ./lambda-bootstrap.mjs in the function's task root, with the environment Lambda would give it.
 */
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { spawnTracked, type TrackedChild } from '../child-processes.js';
import type { InvocationResult } from './lambda-runtime.js';
import { MOTO_REGION } from './moto.js';
import type { DeployedFunction } from './stack.js';

const BOOTSTRAP = join(import.meta.dirname, 'lambda-bootstrap.mjs');

/** A message from the bootstrap: the init's outcome, or an invocation's. */
export interface BootstrapMessage {
  type: string;
  payload?: string;
  error?: InvocationResult['error'];
  /** The environment ends after this error (an unhandled rejection, an uncaught exception, an exit). */
  fatal?: boolean;
  initMs?: number;
  initCpuMs?: number;
  startCpuMs?: number;
}

/** A started environment. Times in ms (see InvocationRecord in ./lambda-runtime.ts). */
export interface Environment {
  proc: TrackedChild;
  initMs: number;
  startMs: number;
  initCpuMs: number;
  startCpuMs: number;
  /** SIGSTOPped while idle. */
  frozen: boolean;
  /** Takes the next message from the bootstrap (the running invocation's reply). */
  reply?: (message: BootstrapMessage) => void;
}

/**
 * Spawns an environment of `f` and resolves once its init ended; rejects with the init error (the error carries
 * Lambda's error object as `lambdaError`) after the process ended. `onStart` is called once the process exists,
 * `onExit` when it ends (a pending invocation then gets a fatal `Runtime.ExitError`).
 */
export async function startEnvironment(
  f: DeployedFunction,
  o: { taskRoot: string; endpoints: Record<string, string>; log(text: string): void; onStart(e: Environment): void; onExit(e: Environment): void },
): Promise<Environment> {
  const env: NodeJS.ProcessEnv = {
    ...f.environment,
    AWS_LAMBDA_FUNCTION_NAME: f.name,
    AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(f.memoryMb),
    AWS_LAMBDA_LOG_GROUP_NAME: `/aws/lambda/${f.name}`,
    AWS_LAMBDA_LOG_STREAM_NAME: `local/[$LATEST]${randomUUID().replaceAll('-', '')}`,
    AWS_LAMBDA_INITIALIZATION_TYPE: 'on-demand',
    AWS_EXECUTION_ENV: `AWS_Lambda_${f.runtime}`,
    AWS_REGION: MOTO_REGION,
    AWS_DEFAULT_REGION: MOTO_REGION,
    AWS_ACCESS_KEY_ID: f.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: f.credentials.secretAccessKey,
    AWS_SESSION_TOKEN: f.credentials.sessionToken,
    LAMBDA_TASK_ROOT: o.taskRoot,
    _HANDLER: f.handler,
    TZ: ':UTC',
    LANG: 'en_US.UTF-8',
    PATH: '/usr/local/bin:/usr/bin:/bin',
    ...o.endpoints,
  };
  const spawned = performance.now();
  const proc = spawnTracked(process.execPath, [BOOTSTRAP], { cwd: o.taskRoot, env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  const child: ChildProcess = proc.child;
  for (const stream of [child.stdout!, child.stderr!]) stream.on('data', (c: Buffer) => o.log(c.toString('utf8')));
  const environment: Environment = { proc, initMs: 0, startMs: 0, initCpuMs: 0, startCpuMs: 0, frozen: false };
  o.onStart(environment);
  child.on('message', (m: BootstrapMessage) => environment.reply?.(m));
  void proc.exited.then(() => {
    o.onExit(environment);
    environment.reply?.({ type: 'error', error: { errorType: 'Runtime.ExitError', errorMessage: `RequestId: exited (${proc.exit?.code ?? proc.exit?.signal})` }, fatal: true });
  });
  const init = await new Promise<BootstrapMessage>((resolve) => {
    environment.reply = resolve;
  });
  environment.reply = undefined;
  if (init.error) {
    await proc.stop(0, 2000);
    throw Object.assign(new Error(init.error.errorMessage), { lambdaError: init.error });
  }
  Object.assign(environment, { initMs: init.initMs ?? 0, startMs: performance.now() - spawned, initCpuMs: init.initCpuMs ?? 0, startCpuMs: init.startCpuMs ?? 0 });
  return environment;
}
