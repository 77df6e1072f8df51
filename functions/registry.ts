/**
 * The registry Lambda (API Gateway HTTP API, payload 2.0): `/v2/...` in, OCI responses out. Thin: builds the
 * runtime once per container, converts the event, calls the core, converts back. The local server calls this
 * same handler.
 */
import middy from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { fromHttpApiEvent, toHttpApiResult } from '../shared/http/lambda-event.js';
import { getRuntime } from '../shared/runtime.js';

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

/** Logs one structured line per request: method, path, status, duration in ms. */
const accessLog = (): middy.MiddlewareObj<APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2> => {
  const started = new WeakMap<object, number>();
  return {
    before: (req) => {
      started.set(req.event, performance.now());
    },
    after: (req) => {
      const e = req.event.requestContext.http;
      runtime.logger.info('request', {
        method: e.method,
        path: req.event.rawPath,
        query: redactQuery(req.event.rawQueryString),
        status: req.response?.statusCode,
        ms: Math.round((performance.now() - (started.get(req.event) ?? performance.now())) * 10) / 10,
        sourceIp: e.sourceIp,
        userAgent: e.userAgent,
      });
    },
  };
};

/** The Lambda entry point. */
export const handler = middy<APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2>()
  .use(injectLambdaContext(runtime.logger, { resetKeys: true }))
  .use(accessLog())
  .handler(async (event) => toHttpApiResult(await runtime.app(fromHttpApiEvent(event))));
