/**
 * A small API Gateway HTTP API on loopback, built from the packaged template's own resources (moto's
 * CloudFormation skips `AWS::ApiGatewayV2::*`): its routes (`RouteKey`), each route's integration
 * (`AWS_PROXY` to a function by `IntegrationUri`, payload format 2.0 only) and the `$default` stage at `/`.
 *
 * What it does as API Gateway does (per the HTTP API developer guide), independently of our own event adapter
 * (shared/http/lambda-event.ts), so a mismatch between the two shows:
 * - route selection: exact method over `ANY`; a route without a greedy variable over one with; among greedy
 *   ones the longest literal prefix; `{name}` matches one segment, `{name+}` the rest; `$default` last; no
 *   route → 404 `{"message":"Not Found"}`;
 * - the 2.0 event: lower-case headers (repeats joined by commas, cookies moved to `cookies`), `rawPath`,
 *   `rawQueryString`, `queryStringParameters`, `pathParameters`, `requestContext` (routeKey, stage `$default`,
 *   `http`, time, requestId), the body base64-encoded unless its content type is text or JSON; it adds
 *   `x-forwarded-for`, `x-forwarded-port` and `x-forwarded-proto` (`http` here: plain HTTP on loopback);
 * - the response: a result with `statusCode` gives status, headers, cookies (`Set-Cookie`) and body (decoded when
 *   `isBase64Encoded`); any other JSON result is a 200 `application/json` body; a function error (an exception,
 *   a timeout, a response over Lambda's 6 MB) → 500 `{"message":"Internal Server Error"}`; no answer within the
 *   integration timeout (30 s by default) → 503 `{"message":"Service Unavailable"}`.
 * HEAD responses keep the function's `Content-Length`.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { LambdaRuntime } from './lambda-runtime.js';
import { MOTO_ACCOUNT } from './moto.js';
import type { DeployedStack } from './stack.js';

/** One route of the API and where it goes. */
export interface ApiRoute {
  routeKey: string;
  method: string;
  /** Path segments after the leading `/` (`''` for a trailing slash). */
  segments: string[];
  functionName: string;
  timeoutMs: number;
}

/** One request the front answered. */
export interface FrontRequest {
  method: string;
  /** Path and query as sent. */
  url: string;
  routeKey?: string;
  status: number;
}

/** The running front. */
export interface HttpApiFront {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** `127.0.0.1:PORT`, the form image references use. */
  host: string;
  routes: ApiRoute[];
  requests: FrontRequest[];
  stop(): Promise<void>;
}

const TEXT_TYPES = /^(text\/|application\/(json|[\w.+-]+\+json|xml|javascript)\b)/i;
const ERROR = (status: number, message: string) => ({ status, body: JSON.stringify({ message }), headers: { 'content-type': 'application/json' } });

/** The HTTP API routes of `stack`'s template (payload 2.0 AWS_PROXY integrations to its functions). */
export function apiRoutes(stack: DeployedStack): ApiRoute[] {
  const { Resources } = stack.template;
  const byLogicalId = new Map([...stack.functions.values()].map((f) => [f.logicalId, f.name]));
  return Object.values(Resources)
    .filter((r) => r.Type === 'AWS::ApiGatewayV2::Route')
    .map((route) => {
      const integrationId = route.Properties.Target['Fn::Join'][1][1].Ref as string;
      const integration = Resources[integrationId].Properties;
      if (integration.IntegrationType !== 'AWS_PROXY' || integration.PayloadFormatVersion !== '2.0') {
        throw new Error(`${route.Properties.RouteKey}: only AWS_PROXY integrations with payload format 2.0 are served here`);
      }
      const functionName = byLogicalId.get(integration.IntegrationUri['Fn::GetAtt'][0]);
      if (!functionName) throw new Error(`${route.Properties.RouteKey}: integration ${integrationId} targets no function of the stack`);
      const routeKey = route.Properties.RouteKey as string;
      const [method, path = ''] = routeKey.split(' ');
      return { routeKey, method, segments: path.slice(1).split('/'), functionName, timeoutMs: integration.TimeoutInMillis ?? 30_000 };
    });
}

/** The route API Gateway picks for `method` `path` (and the path parameters), or undefined. */
export function selectRoute(routes: ApiRoute[], method: string, path: string): { route: ApiRoute; pathParameters: Record<string, string> } | undefined {
  const segments = path.slice(1).split('/');
  const candidates = routes.flatMap((route) => {
    if (route.routeKey === '$default' || (route.method !== 'ANY' && route.method !== method)) return [];
    const params: Record<string, string> = {};
    let greedy = false;
    let literals = 0;
    for (let i = 0; i < route.segments.length; i++) {
      const s = route.segments[i];
      const variable = /^\{([^}+]+)(\+?)\}$/.exec(s);
      if (variable?.[2]) {
        if (i >= segments.length || segments.slice(i).join('/') === '') return [];
        params[variable[1]] = decodeURIComponent(segments.slice(i).join('/'));
        greedy = true;
        break;
      }
      if (i >= segments.length) return [];
      if (variable) {
        if (segments[i] === '') return [];
        params[variable[1]] = decodeURIComponent(segments[i]);
      } else if (s !== segments[i]) return [];
      else literals++;
      if (i === route.segments.length - 1 && segments.length !== route.segments.length) return [];
    }
    return [{ route, params, rank: [greedy ? 0 : 1, literals, route.method === method ? 1 : 0] }];
  });
  candidates.sort((a, b) => b.rank[0] - a.rank[0] || b.rank[1] - a.rank[1] || b.rank[2] - a.rank[2]);
  const best = candidates[0] ?? routes.filter((r) => r.routeKey === '$default').map((route) => ({ route, params: {} }))[0];
  return best && { route: best.route, pathParameters: best.params };
}

/** `12/Mar/2020:19:03:58 +0000`, API Gateway's `requestContext.time`. */
function clfTime(d: Date): string {
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const p = (n: number) => String(n).padStart(2, '0');
  return `${p(d.getUTCDate())}/${months[d.getUTCMonth()]}/${d.getUTCFullYear()}:${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** The payload format 2.0 event for a request that matched `routeKey`. */
function buildEvent(req: http.IncomingMessage, body: Buffer, routeKey: string, pathParameters: Record<string, string>, port: number) {
  const url = new URL(req.url ?? '/', 'http://front');
  const rawQueryString = (req.url ?? '').includes('?') ? (req.url ?? '').slice((req.url ?? '').indexOf('?') + 1) : '';
  const headers: Record<string, string> = {};
  const cookies: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i].toLowerCase();
    const value = req.rawHeaders[i + 1];
    if (name === 'cookie') cookies.push(...value.split(/;\s*/));
    else headers[name] = name in headers ? `${headers[name]},${value}` : value;
  }
  const sourceIp = req.socket.remoteAddress?.replace(/^::ffff:/, '') ?? '127.0.0.1';
  Object.assign(headers, { 'x-forwarded-for': sourceIp, 'x-forwarded-port': String(port), 'x-forwarded-proto': 'http' });
  const queryStringParameters: Record<string, string> = {};
  for (const [k, v] of url.searchParams) queryStringParameters[k] = k in queryStringParameters ? `${queryStringParameters[k]},${v}` : v;
  const now = new Date();
  const domainName = headers.host ?? `127.0.0.1:${port}`;
  const text = TEXT_TYPES.test(headers['content-type'] ?? '');
  return {
    version: '2.0',
    routeKey,
    rawPath: url.pathname,
    rawQueryString,
    ...(cookies.length ? { cookies } : {}),
    headers,
    ...(rawQueryString ? { queryStringParameters } : {}),
    requestContext: {
      accountId: MOTO_ACCOUNT,
      apiId: 'local',
      domainName,
      domainPrefix: domainName.split('.')[0],
      http: { method: req.method ?? 'GET', path: url.pathname, protocol: `HTTP/${req.httpVersion}`, sourceIp, userAgent: headers['user-agent'] ?? '' },
      requestId: randomUUID(),
      routeKey,
      stage: '$default',
      time: clfTime(now),
      timeEpoch: now.getTime(),
    },
    ...(Object.keys(pathParameters).length ? { pathParameters } : {}),
    ...(body.length ? { body: text ? body.toString('utf8') : body.toString('base64') } : {}),
    isBase64Encoded: body.length > 0 && !text,
  };
}

/** The HTTP response for a function's result (payload format 2.0). */
function toResponse(payload: string): { status: number; body: Buffer | string; headers: Record<string, string | string[]> } {
  const result = JSON.parse(payload) as unknown;
  if (typeof result === 'object' && result !== null && 'statusCode' in result) {
    const r = result as { statusCode: unknown; headers?: Record<string, unknown>; body?: string; isBase64Encoded?: boolean; cookies?: string[] };
    if (!Number.isInteger(r.statusCode)) return ERROR(500, 'Internal Server Error');
    const headers: Record<string, string | string[]> = Object.fromEntries(Object.entries(r.headers ?? {}).map(([k, v]) => [k, String(v)]));
    if (r.cookies?.length) headers['set-cookie'] = r.cookies;
    return { status: r.statusCode as number, headers, body: r.isBase64Encoded ? Buffer.from(r.body ?? '', 'base64') : (r.body ?? '') };
  }
  return { status: 200, headers: { 'content-type': 'application/json' }, body: payload };
}

/** Starts the front for `stack`'s HTTP API, invoking its functions on `runtime`. */
export async function startHttpApiFront(stack: DeployedStack, runtime: LambdaRuntime): Promise<HttpApiFront> {
  const routes = apiRoutes(stack);
  const requests: FrontRequest[] = [];
  let port = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const path = (req.url ?? '/').split('?')[0];
      const selected = selectRoute(routes, req.method ?? 'GET', path);
      let answer: ReturnType<typeof toResponse>;
      if (!selected) answer = ERROR(404, 'Not Found');
      else {
        const event = buildEvent(req, Buffer.concat(chunks), selected.route.routeKey, selected.pathParameters, port);
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), selected.route.timeoutMs)));
        const result = await Promise.race([runtime.invoke(selected.route.functionName, event).catch(() => ({ error: true })), timeout]);
        clearTimeout(timer);
        if (result === 'timeout') answer = ERROR(503, 'Service Unavailable');
        else if ('error' in result && result.error) answer = ERROR(500, 'Internal Server Error');
        else answer = toResponse((result as { payload: string }).payload);
      }
      requests.push({ method: req.method ?? 'GET', url: req.url ?? '', routeKey: selected?.route.routeKey, status: answer.status });
      const headers: Record<string, string | string[]> = { ...answer.headers, 'apigw-requestid': randomUUID() };
      if (req.method !== 'HEAD' || !Object.keys(headers).some((h) => h.toLowerCase() === 'content-length')) {
        for (const h of Object.keys(headers)) if (h.toLowerCase() === 'content-length') delete headers[h];
        headers['content-length'] = String(Buffer.byteLength(answer.body));
      }
      res.writeHead(answer.status, headers);
      res.end(req.method === 'HEAD' ? undefined : answer.body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    routes,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
