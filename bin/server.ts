/**
 * The local server (`npm start`): a plain node:http server in front of the same Lambda handler. Each Node
 * request becomes the API Gateway HTTP API v2 event the Lambda would get; the handler's result is written
 * back. Blob bytes are served here, from the signed `/_blobs/...` URLs the handler redirects to (the local
 * stand-in for S3 presigned URLs), with single-range `Range` support (RFC 9110 §14).
 */
import { createReadStream, promises as fs } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { Context } from 'aws-lambda';
import parseRange from 'range-parser';
import { handler } from '../functions/registry.js';
import { buildHttpApiEvent } from '../shared/http/lambda-event.js';
import { errorResponse } from '../shared/http/error-response.js';
import { RegistryError } from '../shared/oci/errors.js';
import { LOCAL_BLOB_ROUTE } from '../shared/store/fs-blob-store.js';
import { getRuntime } from '../shared/runtime.js';

const runtime = await getRuntime();
const { logger, blobStore } = runtime;

/** Largest request body read (bytes): the cache accepts no uploads, so anything more is cut off. */
const MAX_BODY_BYTES = 64 * 1024;

function lambdaContext(): Context {
  const deadline = Date.now() + 15 * 60 * 1000;
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName: 'pullthrough-local',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:local:000000000000:function:pullthrough-local',
    memoryLimitInMB: '1024',
    awsRequestId: randomUUID(),
    logGroupName: 'local',
    logStreamName: 'local',
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total <= MAX_BODY_BYTES) chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function writeError(res: ServerResponse, err: RegistryError, method: string): void {
  const e = errorResponse(err, method);
  res.writeHead(e.status, e.headers);
  res.end(e.body);
}

/** Serves a signed blob URL: 200 whole, 206 one range, 416 unsatisfiable; anything else 404/405. */
async function serveBlob(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams): Promise<void> {
  const method = req.method ?? 'GET';
  if (method !== 'GET' && method !== 'HEAD') return writeError(res, new RegistryError('UNSUPPORTED'), method);
  if (!blobStore) return writeError(res, new RegistryError('BLOB_UNKNOWN', 'blobs are served by the storage backend'), method);
  const digest = blobStore.verifyUrl(path, query);
  if (!digest) return writeError(res, new RegistryError('DENIED', 'blob URL is invalid or expired'), method);
  const file = blobStore.pathOf(digest);
  let size: number;
  try {
    size = (await fs.stat(file)).size;
  } catch {
    return writeError(res, new RegistryError('BLOB_UNKNOWN'), method);
  }
  const headers: Record<string, string> = {
    'Content-Type': 'application/octet-stream',
    'Docker-Content-Digest': digest,
    'Accept-Ranges': 'bytes',
    ETag: `"${digest}"`,
    'Cache-Control': 'max-age=31536000, immutable',
  };
  let start = 0;
  let end = size - 1;
  let status = 200;
  const range = req.headers.range;
  if (range) {
    const parsed = parseRange(size, range, { combine: true });
    if (parsed === -1) {
      res.writeHead(416, { ...headers, 'Content-Range': `bytes */${size}`, 'Content-Length': '0' });
      return void res.end();
    }
    if (parsed !== -2 && parsed.type === 'bytes' && parsed.length === 1) {
      ({ start, end } = parsed[0]);
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
    }
  }
  headers['Content-Length'] = String(size === 0 ? 0 : end - start + 1);
  res.writeHead(status, headers);
  if (method === 'HEAD' || size === 0) return void res.end();
  await pipeline(createReadStream(file, { start, end }), res);
}

async function onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  const rawQueryString = q === -1 ? '' : url.slice(q + 1);
  if (path.startsWith(LOCAL_BLOB_ROUTE)) {
    const started = performance.now();
    await serveBlob(req, res, path, new URLSearchParams(rawQueryString));
    logger.info('request', { method: req.method, path, status: res.statusCode, ms: Math.round((performance.now() - started) * 10) / 10 });
    return;
  }
  const body = await readBody(req);
  const event = buildHttpApiEvent({
    method: req.method ?? 'GET',
    path,
    rawQueryString,
    headers: req.headers,
    body,
    sourceIp: req.socket.remoteAddress,
  });
  const result = await handler(event, lambdaContext());
  const payload = result.body ? Buffer.from(result.body, result.isBase64Encoded ? 'base64' : 'utf8') : undefined;
  res.writeHead(result.statusCode ?? 200, result.headers as Record<string, string>);
  res.end(req.method === 'HEAD' ? undefined : payload);
}

/** Starts the server on `port` (0 picks a free one); resolves once listening. */
export function startServer(port: number, host = '0.0.0.0'): Promise<Server> {
  const server = createServer((req, res) => {
    onRequest(req, res).catch((err: unknown) => {
      logger.error('local server error', { path: req.url, error: err as Error });
      if (!res.headersSent) writeError(res, new RegistryError('UNKNOWN', 'internal error'), req.method ?? 'GET');
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 65_000;
  return new Promise((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolveListen(server));
  });
}

const server = await startServer(runtime.env.port);
const address = server.address();
logger.info('pullthrough listening', {
  port: typeof address === 'object' && address ? address.port : runtime.env.port,
  dataDir: runtime.env.dataDir,
  rules: runtime.config.rules.map((r) => `${r.prefix} -> ${r.upstream}`),
});

let stopping = false;
function stop(signal: string): void {
  if (stopping) return;
  stopping = true;
  logger.info('stopping', { signal });
  const force = setTimeout(() => process.exit(1), 10_000);
  force.unref();
  server.close(() => {
    runtime.close();
    logger.info('stopped');
    process.exit(0);
  });
  server.closeIdleConnections();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
