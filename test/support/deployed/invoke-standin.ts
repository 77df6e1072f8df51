/**
 * The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`) on loopback, in front of the local
 * Lambda service (./lambda-runtime.ts): what the registry bundle's `InvokeCommand` reaches through
 * `AWS_ENDPOINT_URL_LAMBDA`. moto has the functions' metadata but runs no code without Docker.
 *
 * - `X-Amz-Invocation-Type: Event` → 202 at once, the function runs asynchronously (retried as its
 *   EventInvokeConfig says); `RequestResponse` (the default) → 200 with the payload (`X-Amz-Function-Error:
 *   Unhandled` when it failed); `DryRun` → 204.
 * - The caller is named by the access key of its SigV4 `Authorization` header (the credentials each environment
 *   got); whether its role may invoke the function is checked before, by ./iam-gate.ts.
 * - {@link InvokeStandin.failNext} makes the next invocations of a function fail before they run, with an error
 *   the caller sees (default: the 403 `AccessDeniedException` of an IAM change still propagating after a deploy,
 *   which the SDK does not retry) — a fault only a stand-in can produce on demand.
 */
import http from 'node:http';
import { listenOnLoopback } from '../reverse-proxy.js';
import type { LambdaRuntime } from './lambda-runtime.js';
import type { DeployedFunction, DeployedStack } from './stack.js';

/** One Invoke request as the stand-in answered it. */
export interface InvokeRequest {
  functionName: string;
  type: string;
  /** The calling function (by its role's credentials), or `unknown`. */
  caller: string;
  status: number;
  errorType?: string;
}

/** An injected Invoke failure: HTTP status and Lambda error type. */
export interface InvokeFault {
  status: number;
  errorType: string;
  message: string;
}

/** The running stand-in. */
export interface InvokeStandin {
  /** `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_LAMBDA`. */
  url: string;
  /** Every Invoke request, in order. */
  requests: InvokeRequest[];
  /** The next `count` Invoke requests for `functionName` fail with `fault` (default: AccessDeniedException). */
  failNext(functionName: string, count?: number, fault?: InvokeFault): void;
  stop(): Promise<void>;
}

/** The failure of an IAM grant not yet propagated: 403, not retried by the SDK. */
export const ACCESS_DENIED: InvokeFault = {
  status: 403,
  errorType: 'AccessDeniedException',
  message: 'User is not authorized to perform: lambda:InvokeFunction (injected by the test: IAM still propagating)',
};

/** Starts the stand-in for the functions of `stack`, running them on `runtime`. */
export async function startInvokeStandin(stack: DeployedStack, runtime: LambdaRuntime): Promise<InvokeStandin> {
  const requests: InvokeRequest[] = [];
  const faults = new Map<string, InvokeFault[]>();
  const byAccessKey = new Map<string, DeployedFunction>([...stack.functions.values()].map((f) => [f.credentials.accessKeyId, f]));
  const byNameOrArn = (id: string) => [...stack.functions.values()].find((f) => f.name === id || f.arn === id);

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const m = /^\/2015-03-31\/functions\/([^/]+)\/invocations(?:\?.*)?$/.exec(req.url ?? '');
      const type = String(req.headers['x-amz-invocation-type'] ?? 'RequestResponse');
      const accessKey = /Credential=([^/]+)\//.exec(String(req.headers.authorization ?? ''))?.[1] ?? '';
      const caller = byAccessKey.get(accessKey);
      const target = m ? byNameOrArn(decodeURIComponent(m[1])) : undefined;
      const answer = (status: number, body: string, headers: Record<string, string> = {}, errorType?: string) => {
        requests.push({ functionName: target?.name ?? m?.[1] ?? req.url ?? '', type, caller: caller?.name ?? 'unknown', status, errorType });
        res.writeHead(status, { 'content-type': 'application/json', ...(errorType ? { 'x-amzn-errortype': errorType } : {}), ...headers });
        res.end(body);
      };
      const fail = (f: InvokeFault) => answer(f.status, JSON.stringify({ Type: 'User', Message: f.message, message: f.message }), {}, f.errorType);
      if (req.method !== 'POST' || !m) return fail({ status: 404, errorType: 'UnknownOperationException', message: `not an Invoke: ${req.method} ${req.url}` });
      if (!target) return fail({ status: 404, errorType: 'ResourceNotFoundException', message: `Function not found: ${m[1]}` });
      const fault = faults.get(target.name)?.shift();
      if (fault) return fail(fault);
      let event: unknown;
      try {
        event = JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null');
      } catch {
        return fail({ status: 400, errorType: 'InvalidRequestContentException', message: 'Could not parse request body into json' });
      }
      try {
        if (type === 'DryRun') return answer(204, '');
        if (type === 'Event') {
          runtime.invokeAsync(target.name, event);
          return answer(202, '');
        }
        if (type !== 'RequestResponse') return fail({ status: 400, errorType: 'InvalidParameterValueException', message: `invocation type ${type}` });
      } catch (e) {
        return fail({ status: 413, errorType: (e as Error).name, message: (e as Error).message });
      }
      Promise.resolve().then(() => runtime.invoke(target.name, event)).then(
        (r) => answer(200, r.error ? JSON.stringify(r.error) : (r.payload ?? 'null'), { 'x-amz-executed-version': '$LATEST', ...(r.error ? { 'x-amz-function-error': 'Unhandled' } : {}) }),
        (e: Error) => fail({ status: e.name === 'RequestTooLargeException' ? 413 : 500, errorType: e.name, message: e.message }),
      );
    });
  });
  const url = await listenOnLoopback(server);
  return {
    url,
    requests,
    failNext(functionName, count = 1, fault = ACCESS_DENIED) {
      faults.set(functionName, [...(faults.get(functionName) ?? []), ...Array.from({ length: count }, () => fault)]);
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
