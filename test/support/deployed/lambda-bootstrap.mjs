/**
 * One Lambda execution environment's runtime, reduced to what the bundles meet (started by ./lambda-runtime.ts
 * in a plain Node process, cwd = the task root, environment = what Lambda gives the function):
 * - init: imports the handler module as Lambda's Node.js runtime does (`_HANDLER` = `<file>.<export>`, the file
 *   `$LAMBDA_TASK_ROOT/<file>` with `.js`, `.mjs` or `.cjs`), reports the init time, or the init error (the
 *   environment is then discarded);
 * - each invocation (an IPC message): builds the context object, awaits the async handler (callback-style
 *   handlers are not supported: the bundles have none), answers with the JSON payload or the error as Lambda
 *   reports it (`errorType`, `errorMessage`, `trace`);
 * - an unhandled rejection or uncaught exception fails the running invocation and ends the environment, as
 *   Lambda's Node.js runtime does.
 * Plain JavaScript: it runs without tsx, like the runtime the bundles meet on AWS.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const send = (message) => new Promise((resolve) => process.send(message, undefined, undefined, () => resolve()));
const errorOf = (e) => ({
  errorType: e instanceof Error ? e.name : typeof e,
  errorMessage: e instanceof Error ? e.message : String(e),
  trace: e instanceof Error && e.stack ? e.stack.split('\n') : [],
});

let current;
const crash = async (type, e) => {
  const error = { ...errorOf(e), errorType: `Runtime.${type}` };
  await send(current ? { type: 'error', id: current, error, fatal: true } : { type: 'init', error });
  process.exit(129);
};
process.on('unhandledRejection', (e) => crash('UnhandledPromiseRejection', e));
process.on('uncaughtException', (e) => crash('UncaughtException', e));

const handlerSpec = process.env._HANDLER ?? '';
const dot = handlerSpec.lastIndexOf('.');
const [modulePath, exportName] = [handlerSpec.slice(0, dot), handlerSpec.slice(dot + 1)];
const root = process.env.LAMBDA_TASK_ROOT ?? process.cwd();
const started = performance.now();
const cpuAtStart = process.cpuUsage();
let handler;
try {
  const file = ['.js', '.mjs', '.cjs'].map((ext) => join(root, modulePath + ext)).find((f) => existsSync(f));
  if (dot <= 0 || !file) throw Object.assign(new Error(`Cannot find module '${modulePath}'`), { name: 'Runtime.ImportModuleError' });
  const mod = await import(pathToFileURL(file).href);
  handler = mod[exportName];
  if (typeof handler !== 'function') throw Object.assign(new Error(`${handlerSpec} is undefined or not exported`), { name: 'Runtime.HandlerNotFound' });
} catch (e) {
  await send({ type: 'init', error: errorOf(e) });
  process.exit(1);
}
// CPU time (user + system, ms) of the init, and of the whole process so far (Node's own start-up included):
// steadier figures than wall time on a busy machine.
const cpuMs = ({ user, system }) => (user + system) / 1000;
await send({ type: 'init', initMs: performance.now() - started, initCpuMs: cpuMs(process.cpuUsage(cpuAtStart)), startCpuMs: cpuMs(process.cpuUsage()) });

process.on('message', async (msg) => {
  if (msg?.type !== 'invoke') return;
  current = msg.id;
  const context = {
    callbackWaitsForEmptyEventLoop: true,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: msg.invokedFunctionArn,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: msg.requestId,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    getRemainingTimeInMillis: () => Math.max(0, msg.deadline - Date.now()),
  };
  let reply;
  try {
    const result = await handler(JSON.parse(msg.event), context);
    reply = { type: 'result', id: msg.id, payload: JSON.stringify(result === undefined ? null : result) };
  } catch (e) {
    reply = { type: 'error', id: msg.id, error: errorOf(e) };
  }
  current = undefined;
  await send(reply);
});
