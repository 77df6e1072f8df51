/**
 * A local Lambda service for the deployed-shape tier: runs each deployed function's own zip (unzipped into a
 * task root with no node_modules anywhere above it) in execution environments that behave as Lambda's do where
 * the bundles can tell:
 * - an environment is a plain Node process (./lambda-bootstrap.mjs, no tsx) with the function's environment
 *   from the deployed stack (NODE_OPTIONS included), the variables Lambda sets (function name, memory, region,
 *   task root, `_HANDLER`, TZ…) and its role's temporary credentials; the harness adds only endpoint overrides
 *   (`AWS_ENDPOINT_URL*`: every AWS call goes to the stand-ins);
 * - one invocation at a time per environment; a new one (a cold start) when every environment is busy, up to
 *   `maxEnvironments` per function, beyond which invocations queue (Lambda would throttle);
 * - frozen between invocations (SIGSTOP, SIGCONT on the next), as Lambda freezes an idle environment: work left
 *   running after the handler returned does not progress until the next invocation;
 * - the function's timeout ends the environment (`Sandbox.Timedout`); an init error, an unhandled rejection or
 *   an uncaught exception fails the invocation and ends the environment;
 * - payload limits: 6 MB for a synchronous request and response, 256 KB for an asynchronous event;
 * - asynchronous invocations (`Event`: the Invoke stand-in, the schedule) are retried up to the function's
 *   `MaximumRetryAttempts` after a failure (Lambda waits about 1 and 2 minutes; here `asyncRetryDelayMs`).
 * Each function's output (the handler's log lines, and START/END/REPORT lines with init and run times) goes to
 * `<logDir>/<function>.log`, like its CloudWatch log group.
 *
 * Local Node is 20, Lambda's runtime nodejs22.x: the bundles target node22 (esbuild), so only APIs both have work.
 */
import { randomUUID } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { unzipInto } from '../serverless-package.js';
import { startEnvironment, type BootstrapMessage, type Environment } from './lambda-environment.js';
import type { DeployedFunction, DeployedStack } from './stack.js';

/** Lambda's payload limits, bytes: synchronous request and response 6 MB, asynchronous event 256 KB. */
export const SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024;
export const ASYNC_PAYLOAD_LIMIT = 256 * 1024;

/** The outcome of one invocation, as the Invoke API reports it. */
export interface InvocationResult {
  /** The handler's JSON result (`null` for undefined); absent on an error. */
  payload?: string;
  /** The size of that result in bytes, as Lambda measures it against its response limit. */
  payloadBytes?: number;
  /** Lambda's error object (`errorType`, `errorMessage`, `trace`), set when the function failed. */
  error?: { errorType: string; errorMessage: string; trace?: string[] };
}

/** A finished invocation, for tests to count and inspect. */
export interface InvocationRecord extends InvocationResult {
  functionName: string;
  type: 'RequestResponse' | 'Event';
  requestId: string;
  /** The event as the handler received it. */
  event: unknown;
  /**
   * Whether it started a new environment; then that environment's init time (the handler module's import, as
   * Lambda reports `Init Duration`) and start time (spawn until ready: Node's own start-up plus the init), ms.
   */
  cold: boolean;
  initMs?: number;
  startMs?: number;
  /** CPU time (user + system, ms) of the init, and of the environment's process until ready. */
  initCpuMs?: number;
  startCpuMs?: number;
  durationMs: number;
  /** For asynchronous invocations: 0 for the first attempt, then the retries. */
  attempt: number;
}

/** Options of {@link startLambdaRuntime}. */
export interface LambdaRuntimeOptions {
  /** Where task roots and logs go. */
  workDir: string;
  /** Endpoint variables every environment gets (e.g. `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_LAMBDA`). */
  endpoints: Record<string, string>;
  /** Environments per function at most (default 16). */
  maxEnvironments?: number;
  /** Delay before retrying a failed asynchronous invocation (default 1000 ms; Lambda: ~1 min, then ~2 min). */
  asyncRetryDelayMs?: number;
}

/** The running service. */
export interface LambdaRuntime {
  /** Invokes synchronously: resolves with the result or the function error (never rejects for those). */
  invoke(functionName: string, event: unknown): Promise<InvocationResult>;
  /** Queues an asynchronous invocation (retried as configured); throws at once when the event is too large. */
  invokeAsync(functionName: string, event: unknown): void;
  /** Resolves when no asynchronous invocation is queued or running. */
  settled(): Promise<void>;
  /** Every finished invocation, in order of completion. */
  invocations: InvocationRecord[];
  /** The function's log so far. */
  log(functionName: string): string;
  logPath(functionName: string): string;
  /**
   * Ends the idle environments of `functionName` (every function when absent), as Lambda reclaims idle ones: the
   * next invocation starts cold. Resolves once they exited.
   */
  recycle(functionName?: string): Promise<void>;
  /** Ends every environment (SIGKILL). */
  stop(): Promise<void>;
}

/** Starts the service for every function of `stack` (their task roots unzipped from their own artifacts). */
export function startLambdaRuntime(stack: DeployedStack, opts: LambdaRuntimeOptions): LambdaRuntime {
  const max = opts.maxEnvironments ?? 16;
  const logDir = join(opts.workDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const invocations: InvocationRecord[] = [];
  const idle = new Map<string, Environment[]>();
  const all = new Set<Environment>();
  const counts = new Map<string, number>();
  const waiting = new Map<string, (() => void)[]>();
  const asyncRunning = new Set<Promise<void>>();
  const taskRoots = new Map<string, string>();
  const logPath = (name: string) => join(logDir, `${name}.log`);
  const writeLog = (name: string, text: string) => appendFileSync(logPath(name), text.endsWith('\n') ? text : `${text}\n`);

  const fn = (name: string): DeployedFunction => {
    const f = stack.functions.get(name);
    if (!f) throw Object.assign(new Error(`Function not found: ${name}`), { name: 'ResourceNotFoundException' });
    return f;
  };
  const taskRoot = (f: DeployedFunction) => {
    let root = taskRoots.get(f.name);
    if (!root) {
      root = unzipInto(f.code, join(opts.workDir, 'task', f.name));
      for (let d = root; d !== dirname(d); d = dirname(d)) {
        if (existsSync(join(d, 'node_modules'))) throw new Error(`${d}/node_modules would be visible to ${f.name}'s bundle`);
      }
      taskRoots.set(f.name, root);
    }
    return root;
  };

  /** Starts an environment of `f` (see ./lambda-environment.ts), tracked until it exits. */
  async function coldStart(f: DeployedFunction): Promise<Environment> {
    return startEnvironment(f, {
      taskRoot: taskRoot(f),
      endpoints: opts.endpoints,
      log: (text) => writeLog(f.name, text),
      onStart: (environment) => all.add(environment),
      onExit: (environment) => {
        all.delete(environment);
        counts.set(f.name, (counts.get(f.name) ?? 1) - 1);
        idle.set(f.name, (idle.get(f.name) ?? []).filter((e) => e !== environment));
      },
    });
  }

  /** An idle environment (thawed) or a new one; waits while the function is at `max`. */
  async function acquire(f: DeployedFunction): Promise<{ environment: Environment; cold: boolean }> {
    for (;;) {
      const ready = idle.get(f.name)?.pop();
      if (ready) {
        if (ready.frozen) ready.proc.child.kill('SIGCONT');
        ready.frozen = false;
        return { environment: ready, cold: false };
      }
      if ((counts.get(f.name) ?? 0) < max) break;
      await new Promise<void>((r) => waiting.set(f.name, [...(waiting.get(f.name) ?? []), r]));
    }
    counts.set(f.name, (counts.get(f.name) ?? 0) + 1);
    try {
      return { environment: await coldStart(f), cold: true };
    } catch (e) {
      release(f, undefined);
      throw e;
    }
  }

  /**
   * Back to the idle pool, frozen (unless it ended: `environment` undefined; its exit already freed its place),
   * and wakes one waiting invocation.
   */
  function release(f: DeployedFunction, environment: Environment | undefined) {
    if (environment && !environment.proc.exit) {
      environment.proc.child.kill('SIGSTOP');
      environment.frozen = true;
      idle.set(f.name, [...(idle.get(f.name) ?? []), environment]);
    }
    waiting.get(f.name)?.shift()?.();
  }

  async function run(name: string, event: unknown, type: InvocationRecord['type'], attempt = 0): Promise<InvocationResult> {
    const f = fn(name);
    const requestId = randomUUID();
    /** When the event went to the environment (the invocation's duration runs from there). */
    let sent = performance.now();
    const record = (result: InvocationResult, cold: boolean, environment?: Environment) => {
      const e = cold ? environment : undefined;
      const started = e ? { initMs: e.initMs, startMs: e.startMs, initCpuMs: e.initCpuMs, startCpuMs: e.startCpuMs } : {};
      const durationMs = performance.now() - sent;
      invocations.push({ functionName: name, type, requestId, event, cold, ...started, durationMs, attempt, ...result });
      writeLog(name, `END RequestId: ${requestId}\nREPORT RequestId: ${requestId}\tDuration: ${durationMs.toFixed(2)} ms${e ? `\tInit Duration: ${e.initMs.toFixed(2)} ms` : ''}`);
      return result;
    };
    let acquired: Awaited<ReturnType<typeof acquire>>;
    try {
      acquired = await acquire(f);
    } catch (e) {
      return record({ error: (e as { lambdaError?: InvocationResult['error'] }).lambdaError ?? { errorType: 'Runtime.Unknown', errorMessage: String(e) } }, true);
    }
    const { environment, cold } = acquired;
    writeLog(name, `START RequestId: ${requestId} Version: $LATEST`);
    const deadline = Date.now() + f.timeoutSeconds * 1000;
    const reply = new Promise<BootstrapMessage>((resolve) => {
      environment.reply = resolve;
    });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), f.timeoutSeconds * 1000)));
    sent = performance.now();
    environment.proc.child.send({ type: 'invoke', id: requestId, event: JSON.stringify(event), deadline, requestId, invokedFunctionArn: f.arn });
    const outcome = await Promise.race([reply, timedOut]);
    clearTimeout(timer);
    environment.reply = undefined;
    let result: InvocationResult;
    if (outcome === 'timeout') {
      await environment.proc.stop(0, 2000);
      result = { error: { errorType: 'Sandbox.Timedout', errorMessage: `Task timed out after ${f.timeoutSeconds.toFixed(2)} seconds` } };
    } else if (outcome.type !== 'result') {
      result = { error: outcome.error };
    } else {
      const payloadBytes = Buffer.byteLength(outcome.payload ?? '');
      result = type === 'RequestResponse' && payloadBytes > SYNC_PAYLOAD_LIMIT
        ? { payloadBytes, error: { errorType: 'Function.ResponseSizeTooLarge', errorMessage: `Response payload size exceeded maximum allowed payload size (${SYNC_PAYLOAD_LIMIT} bytes).` } }
        : { payload: outcome.payload, payloadBytes };
    }
    if (outcome !== 'timeout' && outcome.fatal) await environment.proc.exited;
    release(f, environment.proc.exit ? undefined : environment);
    return record(result, cold, environment);
  }

  function tooLarge(event: unknown, limit: number) {
    const size = Buffer.byteLength(JSON.stringify(event));
    if (size > limit) throw Object.assign(new Error(`Request must be smaller than ${limit} bytes for the InvokeFunction operation`), { name: 'RequestTooLargeException' });
  }

  return {
    invoke(name, event) {
      fn(name);
      tooLarge(event, SYNC_PAYLOAD_LIMIT);
      return run(name, event, 'RequestResponse');
    },
    invokeAsync(name, event) {
      const f = fn(name);
      tooLarge(event, ASYNC_PAYLOAD_LIMIT);
      const attempts = (async () => {
        for (let attempt = 0; attempt <= f.asyncRetries; attempt++) {
          if (attempt > 0) await new Promise((r) => setTimeout(r, opts.asyncRetryDelayMs ?? 1000));
          if (!(await run(name, event, 'Event', attempt)).error) return;
        }
      })();
      asyncRunning.add(attempts);
      void attempts.finally(() => asyncRunning.delete(attempts));
    },
    async settled() {
      while (asyncRunning.size) await Promise.all([...asyncRunning]);
    },
    invocations,
    log: (name) => (existsSync(logPath(name)) ? readFileSync(logPath(name), 'utf8') : ''),
    logPath,
    async recycle(functionName) {
      const names = functionName === undefined ? [...idle.keys()] : [functionName];
      const reclaimed = names.flatMap((n) => idle.get(n) ?? []);
      for (const n of names) idle.set(n, []);
      await Promise.all(reclaimed.map((e) => e.proc.stop(0, 2000)));
    },
    async stop() {
      await Promise.all([...all].map((e) => e.proc.stop(0, 2000)));
    },
  };
}
