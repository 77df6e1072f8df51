/**
 * The local server (`npm start`): a plain node:http server in front of the same Lambda handler. Each Node
 * request becomes the API Gateway HTTP API v2 event the Lambda would get; the handler's result is written
 * back. Blob bytes are served here, from the signed `/_blobs/...` URLs the handler redirects to (the local
 * stand-in for S3 presigned URLs), with single-range `Range` support (RFC 9110 §14).
 *
 * Blob bodies are read in 1 MiB chunks: with the 64 KiB default, serving a layer took about three times the CPU
 * and the pull benchmark's blob bodies were about 2× slower than Go's registry. A blob still being filled from
 * the upstream in this process is streamed while it arrives (fs-blob-store.ts, "Stream while filling"): 200
 * with `Content-Length` when the upstream announced the size, chunked otherwise; when the fill fails the
 * connection is destroyed, so the client never gets a complete body of unverified bytes. A `Range` request for
 * such a blob waits (bounded) for the commit and is then served from the file as usual.
 */
import { createReadStream, promises as fs } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { randomBytes, randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Context } from 'aws-lambda';
import parseRange from 'range-parser';
import { buildHttpApiEvent } from '../shared/http/lambda-event.js';
import { errorResponse } from '../shared/http/error-response.js';
import { RegistryError } from '../shared/oci/errors.js';
import { BLOB_READ_CHUNK, LOCAL_BLOB_ROUTE, openFsBlobStore, type InProgressBlob } from '../shared/store/fs-blob-store.js';
import { sha256Digest, type Digest } from '../shared/oci/digest.js';
import { getRuntime } from '../shared/runtime.js';

const runtime = await getRuntime().catch((err: unknown) => {
  // A bad config or environment: say what is wrong, without a stack trace, and stop.
  process.stderr.write(`pullthrough: cannot start: ${(err as Error).message}\n`);
  process.exit(1);
});
// Imported after the runtime built: the handler module builds the same (memoised) runtime at load.
const { handler } = await import('../functions/registry.js');
const { logger, blobStore } = runtime;
// This server's blob route tails writes in progress: blob misses may be answered before the fill commits.
blobStore?.enableStreamWhileFilling();

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
  let size = await fileSize(file);
  if (size === undefined) {
    const filling = blobStore.openInProgress(digest);
    if (filling && !req.headers.range) return serveFilling(req, res, method, digest, filling);
    if (filling) {
      // A range of a blob still filling: wait for the commit (bounded by the store's idle limit), then serve it.
      try {
        await filling.whenCommitted();
      } catch (err) {
        logger.warn('blob fill failed while a range waited', { digest, reason: (err as Error).message });
        return writeError(res, new RegistryError('UNAVAILABLE', 'blob could not be fetched from the upstream; retry', { headers: { 'Retry-After': '10' } }), method);
      }
    }
    // Committed meanwhile (between the stat and openInProgress), or after the wait above.
    size = await fileSize(file);
    // A validly signed URL was handed out by the registry for this digest, so a missing blob means its fill
    // failed after the redirect: 503 (retry), never 404 — clients read 404 as "does not exist" (podman
    // gives up, containerd silently goes around the cache).
    if (size === undefined) {
      return writeError(res, new RegistryError('UNAVAILABLE', 'blob could not be fetched from the upstream; retry', { headers: { 'Retry-After': '10' } }), method);
    }
  }
  const headers = blobHeaders(digest);
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
  await pipeline(createReadStream(file, { start, end, highWaterMark: BLOB_READ_CHUNK }), res);
}

async function fileSize(file: string): Promise<number | undefined> {
  try {
    return (await fs.stat(file)).size;
  } catch {
    return undefined;
  }
}

function blobHeaders(digest: Digest): Record<string, string> {
  return {
    'Content-Type': 'application/octet-stream',
    'Docker-Content-Digest': digest,
    'Accept-Ranges': 'bytes',
    ETag: `"${digest}"`,
    'Cache-Control': 'max-age=31536000, immutable',
  };
}

/**
 * Serves a blob whose fill is still running in this process: 200, the bytes as they arrive. A failed fill (digest
 * or size mismatch, upstream reset, stall) destroys the response, so the client sees a cut connection.
 */
async function serveFilling(req: IncomingMessage, res: ServerResponse, method: string, digest: Digest, filling: InProgressBlob): Promise<void> {
  const headers = blobHeaders(digest);
  if (filling.expectedSize !== undefined) headers['Content-Length'] = String(filling.expectedSize);
  if (method === 'HEAD') {
    res.writeHead(200, headers);
    return void res.end();
  }
  res.writeHead(200, headers);
  try {
    await pipeline(filling.read(), res);
  } catch (err) {
    if (!res.destroyed) res.destroy();
    logger.warn('blob streamed while filling was cut off', { digest, reason: (err as Error).message, clientClosed: req.destroyed });
  }
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

/** Starts the server on `host`:`port` (port 0 picks a free one); resolves once listening. */
export function startServer(port: number, host = '127.0.0.1'): Promise<Server> {
  const server = createServer((req, res) => {
    onRequest(req, res).catch((err: unknown) => {
      logger.error('local server error', { path: req.url, error: err as Error });
      if (!res.headersSent) writeError(res, new RegistryError('UNKNOWN', 'internal error'), req.method ?? 'GET');
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 65_000;
  // Requests Node's HTTP parser rejects (bad method token, oversized headers, malformed framing) still get an
  // OCI error body instead of an empty 400.
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const body = JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: 'malformed HTTP request' }] });
    socket.end(
      `HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n${body}`,
    );
    logger.info('request', { status, error: err.code ?? 'client error' });
  });
  return new Promise((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolveListen(server));
  });
}

/** Bytes pushed through the blob pipeline at start-up by {@link warmUp}. */
const WARM_UP_BYTES = 8 * 1024 * 1024;

/**
 * Start-up warm-up, before the server listens (bounded; failures ignored). A fresh process pays first-use costs
 * on its first blob: Node's global fetch (undici) loads lazily (50–100 ms on its first call), and the streaming
 * code (web streams, hashing, the store's writer and tail reader, the HTTP response) runs unoptimised; measured
 * on the first layer of a cold pull, about 150 ms over the later ones. So one synthetic fill goes through the
 * same code: a throwaway loopback "upstream" → fetch → FsBlobStore.write in a scratch dir, streamed while
 * filling → a loopback blob route → fetch, then the committed file once more. Nothing touches the real store.
 */
async function warmUp(): Promise<void> {
  const payload = randomBytes(WARM_UP_BYTES);
  const digest = sha256Digest(payload);
  const dir = await fs.mkdtemp(join(tmpdir(), 'pullthrough-warmup-'));
  const servers: Server[] = [];
  const listen = async (handle: (req: IncomingMessage, res: ServerResponse) => Promise<void>) => {
    const s = createServer((req, res) => void handle(req, res).catch(() => res.destroy()));
    servers.push(s);
    await new Promise<void>((r, reject) => {
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => r());
    });
    return `http://127.0.0.1:${(s.address() as AddressInfo).port}/`;
  };
  const drain = async (url: string) => {
    const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
    if (res.body) for await (const _ of Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>));
  };
  let committed: Promise<unknown> | undefined;
  try {
    const store = await openFsBlobStore(dir);
    const upstreamUrl = await listen(async (_req, res) => {
      res.writeHead(200, { 'Content-Length': String(payload.length) });
      res.end(payload);
    });
    const routeUrl = await listen(async (req, res) => {
      if (req.url === '/committed') {
        res.writeHead(200, { 'Content-Length': String(payload.length) });
        return pipeline(createReadStream(store.pathOf(digest), { highWaterMark: BLOB_READ_CHUNK }), res);
      }
      const up = await fetch(upstreamUrl, { signal: AbortSignal.timeout(3000) });
      const writing = store.write(digest, Readable.fromWeb(up.body as unknown as WebReadableStream<Uint8Array>), payload.length);
      committed = writing;
      const filling = store.openInProgress(digest);
      res.writeHead(200, { 'Content-Length': String(payload.length) });
      await Promise.all([filling ? pipeline(filling.read(), res) : res.end(), writing]);
    });
    await drain(routeUrl);
    await committed; // the reader ended at verification; the rename follows
    await drain(`${routeUrl}committed`);
  } catch (err) {
    logger.debug('warm-up failed (ignored)', { reason: (err as Error).message });
  } finally {
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
    await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

const warmUpStarted = performance.now();
await warmUp();
logger.debug('warmed up', { ms: Math.round(performance.now() - warmUpStarted) });

const server = await startServer(runtime.env.port, runtime.env.host);
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
