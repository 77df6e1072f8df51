/**
 * The registry Lambda (API Gateway HTTP API, payload 2.0): `/v2/...` in, OCI responses out. Thin: builds the
 * runtime once per container, converts the event, calls the core, converts back. The local server serves its
 * requests through the same {@link serveHttpApiEvent}, with a logger of its own (no Lambda context on its lines).
 */
import middy from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { fromHttpApiEvent, toHttpApiResult } from '../shared/http/lambda-event.js';
import type { Log } from '../shared/observe/log.js';
import { inScope, newScope } from '../shared/observe/request-scope.js';
import { getRuntime } from '../shared/runtime.js';
import { flushMetrics } from './flush-metrics.js';

const runtime = await getRuntime();

/** Query parameters whose values never reach a log line. */
const SECRET_PARAM = /pass|token|secret|key|sig|cred|auth/i;

/** The raw query string with secret-looking values replaced by `***`; undefined when empty. */
function redactQuery(raw: string | undefined): string | undefined {
  if (!raw) return undefined;
  const q = new URLSearchParams(raw);
  for (const k of new Set(q.keys())) if (SECRET_PARAM.test(k)) q.set(k, '***');
  return q.toString().slice(0, 500);
}

const round = (ms: number) => Math.round(ms * 10) / 10;

/**
 * Serves one event and writes its request line on `log`: method, path, status, ms, and what the cache did —
 * `cache` (hit | miss | stale | revalidated | refreshed | none, shared/observe/metrics.ts), `rule`, `verify` (the
 * signature policy's verdict on the manifest answered: verified | unsigned | refused | exempt, when a policy applies), and the
 * upstream requests the request caused (`upstreamRequests`, `upstreamMs`: their times to response headers).
 */
export async function serveHttpApiEvent(event: APIGatewayProxyEventV2, log: Log): Promise<APIGatewayProxyStructuredResultV2> {
  const started = performance.now();
  const scope = newScope();
  const res = runtime.env.accounting ? await inScope(scope, () => runtime.app(fromHttpApiEvent(event))) : await runtime.app(fromHttpApiEvent(event));
  const e = event.requestContext.http;
  log.info('request', {
    method: e.method,
    path: event.rawPath,
    query: redactQuery(event.rawQueryString),
    status: res.status,
    ms: round(performance.now() - started),
    cache: scope.cache ?? 'none',
    rule: scope.rule,
    ...(scope.verify ? { verify: scope.verify } : {}),
    upstreamRequests: scope.upstreamRequests,
    upstreamMs: round(scope.upstreamMs),
    sourceIp: e.sourceIp,
    userAgent: e.userAgent,
  });
  return toHttpApiResult(res);
}

/** The Lambda entry point. */
export const handler = middy<APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2>()
  .use(injectLambdaContext(runtime.logger, { resetKeys: true }))
  .use(flushMetrics(runtime.emf, runtime.stats))
  .handler((event) => serveHttpApiEvent(event, runtime.logger));
