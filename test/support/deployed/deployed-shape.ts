/**
 * The deployed shape, assembled: the stack packaged with osls, deployed into moto (./stack.ts), its functions'
 * zips run by the local Lambda service (./lambda-runtime.ts) behind the HTTP API front (./http-api-front.ts), the
 * Lambda Invoke stand-in (./invoke-standin.ts) and the EventBridge schedules ({@link DeployedShape.fireSchedule}),
 * every AWS call of a function checked against its role by the IAM gate (./iam-gate.ts).
 *
 * Generic over the template: every `AWS::Lambda::Function` runs, every HTTP API route is served, every scheduled
 * rule can be fired, so a function added to serverless.yml needs nothing here.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { scratchDir } from '../scratch.js';
import { oslsPackage, type Packaged } from '../serverless-package.js';
import { startHttpApiFront, type HttpApiFront } from './http-api-front.js';
import { startIamGate, type IamGate } from './iam-gate.js';
import { startInvokeStandin, type InvokeStandin } from './invoke-standin.js';
import { startLambdaRuntime, type InvocationRecord, type LambdaRuntime } from './lambda-runtime.js';
import { MOTO_ACCOUNT, MOTO_REGION, startMoto, type Moto } from './moto.js';
import { deployStack, type DeployedStack, type Schedule } from './stack.js';

/** Options of {@link startDeployedShape}. */
export interface DeployedShapeOptions {
  /** `--param name=value` pairs for `osls package` (e.g. allowAnonymousClients). */
  params?: Record<string, string>;
  /** The pullthrough.config.yml packaged with the functions (YAML text); default: the repository's. */
  config?: string;
}

/** The running deployed shape. */
export interface DeployedShape {
  packaged: Packaged;
  moto: Moto;
  stack: DeployedStack;
  gate: IamGate;
  runtime: LambdaRuntime;
  invoke: InvokeStandin;
  front: HttpApiFront;
  /**
   * Fires `schedule` (default: the only one) as EventBridge does: an asynchronous invocation of each target with
   * the `Scheduled Event` event (or the target's Input). Resolves with those invocations once they finished.
   */
  fireSchedule(schedule?: Schedule): Promise<InvocationRecord[]>;
  /** Tails of every function's log and of moto's, for a failure message. */
  diagnostics(): string;
  stop(): Promise<void>;
}

/** The event EventBridge sends a scheduled rule's target. */
export function scheduledEvent(schedule: Schedule, at = new Date()) {
  return {
    version: '0',
    id: randomUUID(),
    'detail-type': 'Scheduled Event',
    source: 'aws.events',
    account: MOTO_ACCOUNT,
    time: at.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    region: MOTO_REGION,
    resources: [schedule.ruleArn],
    detail: {},
  };
}

/** Packages, deploys and starts everything; stops what started if a step fails. */
export async function startDeployedShape(opts: DeployedShapeOptions = {}): Promise<DeployedShape> {
  const work = scratchDir('deployed-');
  const args = Object.entries(opts.params ?? {}).flatMap(([k, v]) => ['--param', `${k}=${v}`]);
  const [packaging, starting] = await Promise.allSettled([
    oslsPackage(join(work, 'package'), args, opts.config === undefined ? {} : { 'pullthrough.config.yml': opts.config }),
    startMoto(),
  ]);
  if (packaging.status === 'rejected' || starting.status === 'rejected') {
    if (starting.status === 'fulfilled') await starting.value.stop();
    throw packaging.status === 'rejected' ? packaging.reason : (starting as PromiseRejectedResult).reason;
  }
  const [packaged, moto] = [packaging.value, starting.value];
  const stops: (() => Promise<void>)[] = [() => moto.stop()];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
  };
  try {
    const stack = await deployStack(moto, packaged);
    // Every AWS call of a function goes through the IAM gate, which forwards Lambda Invoke to the stand-in (which
    // needs the runtime, which needs the gate's URL: the gate reads the stand-in's URL when the first call comes).
    let invokeUrl = '';
    const gate = await startIamGate(stack, { moto: moto.endpoint, lambda: () => invokeUrl });
    stops.push(() => gate.stop());
    const runtime = startLambdaRuntime(stack, { workDir: join(work, 'lambda'), endpoints: { AWS_ENDPOINT_URL: gate.url } });
    stops.push(() => runtime.stop());
    const invoke = await startInvokeStandin(stack, runtime);
    stops.push(() => invoke.stop());
    invokeUrl = invoke.url;
    const front = await startHttpApiFront(stack, runtime);
    stops.push(() => front.stop());
    return {
      packaged,
      moto,
      stack,
      gate,
      runtime,
      invoke,
      front,
      async fireSchedule(schedule) {
        const s = schedule ?? (stack.schedules.length === 1 ? stack.schedules[0] : undefined);
        if (!s) throw new Error(`name the schedule to fire: ${stack.schedules.map((x) => x.ruleName).join(', ')}`);
        const before = runtime.invocations.length;
        for (const t of s.targets) runtime.invokeAsync(t.functionName, t.input === undefined ? scheduledEvent(s) : JSON.parse(t.input));
        await runtime.settled();
        return runtime.invocations.slice(before).filter((i) => s.targets.some((t) => t.functionName === i.functionName));
      },
      diagnostics() {
        const notable = (text: string) =>
          text.split('\n').filter((l) => /"level":"(ERROR|WARN)"|^\s*(Error|Runtime\.)|Task timed out/.test(l)).slice(-10).map((l) => l.slice(0, 2000));
        const failed = runtime.invocations.filter((i) => i.error).slice(-10).map((i) => `${i.functionName} ${i.type}: ${i.error!.errorType} ${i.error!.errorMessage}`);
        return [`--- failed invocations`, ...failed, ...[...stack.functions.keys()].flatMap((n) => [`--- ${n} (${runtime.logPath(n)})`, ...notable(runtime.log(n))])].join('\n');
      },
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
