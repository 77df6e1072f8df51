/**
 * The API Gateway HTTP API (payload format 2.0) adapter: event → {@link RegistryRequest}, and
 * {@link RegistryResponse} → result. Also builds events, for the local server (which turns every Node request
 * into the event the Lambda gets) and for tests' event factories.
 */
import { randomUUID } from 'node:crypto';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import type { RegistryRequest, RegistryResponse } from './types.js';

/** Converts an HTTP API v2 event. `rawPath` is kept percent-encoded. */
export function fromHttpApiEvent(event: APIGatewayProxyEventV2): RegistryRequest {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(event.headers ?? {})) if (v !== undefined) headers[k.toLowerCase()] = v;
  return {
    method: event.requestContext.http.method.toUpperCase(),
    path: event.rawPath,
    query: new URLSearchParams(event.rawQueryString ?? ''),
    headers,
    sourceIp: event.requestContext.http.sourceIp,
    ...(event.body ? { body: Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8') } : {}),
  };
}

/** Converts a response; binary-safe (bodies are sent base64 so manifests stay byte-exact). */
export function toHttpApiResult(res: RegistryResponse): APIGatewayProxyStructuredResultV2 {
  const body = res.body === undefined ? undefined : typeof res.body === 'string' ? Buffer.from(res.body) : Buffer.from(res.body);
  return {
    statusCode: res.status,
    headers: res.headers,
    ...(body ? { body: body.toString('base64'), isBase64Encoded: true } : { body: '' }),
  };
}

/** What is needed to build an event. Header names in any case; a repeated header as an array. */
export interface EventInit {
  method: string;
  /** Raw path, percent-encoded as sent. */
  path: string;
  rawQueryString?: string;
  headers?: Record<string, string | string[] | undefined>;
  body?: Buffer;
  sourceIp?: string;
  domainName?: string;
}

/** Builds the HTTP API v2 event API Gateway would send for a request (used by the local server and tests). */
export function buildHttpApiEvent(init: EventInit): APIGatewayProxyEventV2 {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(init.headers ?? {})) {
    if (v === undefined) continue;
    headers[k.toLowerCase()] = Array.isArray(v) ? v.join(',') : v;
  }
  const rawQueryString = init.rawQueryString ?? '';
  const queryStringParameters: Record<string, string> = {};
  for (const [k, v] of new URLSearchParams(rawQueryString)) queryStringParameters[k] = k in queryStringParameters ? `${queryStringParameters[k]},${v}` : v;
  const now = new Date();
  const domainName = init.domainName ?? headers.host ?? 'localhost';
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: init.path,
    rawQueryString,
    headers,
    ...(rawQueryString ? { queryStringParameters } : {}),
    requestContext: {
      accountId: 'local',
      apiId: 'local',
      domainName,
      domainPrefix: domainName.split('.')[0],
      http: {
        method: init.method.toUpperCase(),
        path: init.path,
        protocol: 'HTTP/1.1',
        sourceIp: init.sourceIp ?? '127.0.0.1',
        userAgent: headers['user-agent'] ?? '',
      },
      requestId: randomUUID(),
      routeKey: '$default',
      stage: '$default',
      time: now.toISOString(),
      timeEpoch: now.getTime(),
    },
    ...(init.body && init.body.length > 0 ? { body: init.body.toString('base64'), isBase64Encoded: true } : { isBase64Encoded: false }),
  };
}
