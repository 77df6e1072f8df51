/**
 * The local server (`npm start`): a plain node:http server in front of the same Lambda handler. Each Node
 * request becomes the API Gateway HTTP API v2 event the Lambda would get; the handler's result is written
 * back. Blob bytes are served here too, from the signed `/_blobs/...` URLs the handler redirects to (the local
 * stand-in for S3 presigned URLs): see blob-route.ts (single-range `Range`, streaming blobs still being filled).
 * Before listening the server warms up its blob path (warm-up.ts).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { buildHttpApiEvent } from '../shared/http/lambda-event.js';
import { RegistryError } from '../shared/oci/errors.js';
import { LOCAL_BLOB_ROUTE } from '../shared/store/fs-blob-store.js';
import { createLogger } from '../shared/logger.js';
import { exposureWarning } from '../shared/auth/setup.js';
import { getRuntime } from '../shared/runtime.js';
import { createBlobRoute } from './blob-route.js';
import { CANNOT_START } from './cli/runtime.js';
import { startMetricsListener } from './metrics-listener.js';
import { warmUp } from './warm-up.js';
import { writeError } from './write-error.js';

/**
 * A start-up problem the operator can fix (bad config, environment, busy port): `pullthrough: cannot start: `
 * with every problem (shared/config-environment.ts `StartupError`), no stack, exit code 2 like every CLI command
 * whose runtime cannot start (bin/cli/runtime.ts `CANNOT_START`).
 */
function cannotStart(message: string): never {
  process.stderr.write(`pullthrough: cannot start: ${message}\n`);
  process.exit(CANNOT_START);
}

const runtime = await getRuntime().catch((err: unknown) => cannotStart((err as Error).message));
// Imported after the runtime built: the handler module builds the same (memoised) runtime at load.
const { serveHttpApiEvent } = await import('../functions/registry.js');
const { blobStore } = runtime;
// The server's lines (requests, blob route, malformed requests, lifecycle) use a logger of their own, without the
// Lambda fields (function_arn, cold_start, …) the Lambda handler's logger carries.
const logger = createLogger(runtime.env.logLevel);
// This server's blob route tails writes in progress: blob misses may be answered before the fill commits.
blobStore?.enableStreamWhileFilling();
// The per-rule counters `stats` reads are written once a minute (and when the server stops).
runtime.stats.startTimer();

const serveBlob = createBlobRoute({ blobStore, logger });

/** Largest request body read (bytes): the cache accepts no uploads, so anything more is cut off. */
const MAX_BODY_BYTES = 64 * 1024;

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total <= MAX_BODY_BYTES) chunks.push(chunk);
  }
  return Buffer.concat(chunks);
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
  const result = await serveHttpApiEvent(event, logger);
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
    // skopeo and others try TLS first on a plain-HTTP registry: a TLS handshake (first byte 0x16) is expected
    // noise, not an error worth an INFO line.
    const tlsProbe = (err as { rawPacket?: Buffer }).rawPacket?.[0] === 0x16;
    logger[tlsProbe ? 'debug' : 'info']('request', { status, error: tlsProbe ? 'TLS handshake on plain HTTP' : (err.code ?? 'client error') });
  });
  return new Promise((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolveListen(server));
  });
}

const warmUpStarted = performance.now();
await warmUp(logger);
logger.debug('warmed up', { ms: Math.round(performance.now() - warmUpStarted) });

const exposed = exposureWarning(runtime.env.host, runtime.config);
if (exposed) logger.warn(exposed);

const server = await startServer(runtime.env.port, runtime.env.host).catch((err: NodeJS.ErrnoException) => {
  const where = `${runtime.env.host}:${runtime.env.port}`;
  if (err.code === 'EADDRINUSE') cannotStart(`${where} is already in use (set PULLTHROUGH_PORT to another port)`);
  if (err.code === 'EADDRNOTAVAIL') cannotStart(`${runtime.env.host} is not an address of this machine (PULLTHROUGH_HOST)`);
  if (err.code === 'EACCES') cannotStart(`no permission to listen on ${where} (ports below 1024 need privileges)`);
  return cannotStart(`listening on ${where} failed: ${err.message}`);
});
// The Prometheus listener (PULLTHROUGH_METRICS_PORT), on its own port.
const metricsServer = runtime.prometheus && runtime.env.metricsPort !== undefined
  ? await startMetricsListener(runtime.prometheus, runtime.env.metricsPort, runtime.env.metricsHost, logger).catch((err: NodeJS.ErrnoException) => {
    const where = `${runtime.env.metricsHost}:${runtime.env.metricsPort}`;
    if (err.code === 'EADDRINUSE') cannotStart(`${where} (PULLTHROUGH_METRICS_PORT) is already in use`);
    return cannotStart(`the metrics listener on ${where} failed: ${err.message}`);
  })
  : undefined;
let stopping = false;
function stop(signal: string): void {
  if (stopping) return;
  stopping = true;
  logger.info('stopping', { signal });
  const force = setTimeout(() => process.exit(1), 10_000);
  force.unref();
  metricsServer?.close();
  metricsServer?.closeAllConnections();
  server.close(async () => {
    await runtime.stats.close();
    runtime.close();
    logger.info('stopped');
    process.exit(0);
  });
  server.closeIdleConnections();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
stopWithLauncher();

// Logged once the signal handlers are in place: whoever waits for this line may stop the server at once.
const metricsAddress = metricsServer?.address();
const address = server.address();
logger.info('pullthrough listening', {
  port: typeof address === 'object' && address ? address.port : runtime.env.port,
  dataDir: runtime.env.dataDir,
  rules: runtime.config.rules.map((r) => `${r.prefix} -> ${r.upstream}`),
  ...(metricsAddress && typeof metricsAddress === 'object' ? { metrics: `http://${metricsAddress.address}:${metricsAddress.port}/metrics` } : {}),
});

/**
 * `npx pullthrough serve` runs this process under `sh -c` (npm exec, `npm_command=exec`), and npm passes SIGTERM to
 * that shell only: the shell dies and this server would be left running with nobody to stop it. So under npm exec
 * the server watches the process that started it (once a second) and stops as on SIGTERM (exit 0) when it is
 * gone. Elsewhere (`npm start` execs node; `node bin/pullthrough.ts serve`, a service manager) signals reach this
 * process itself, and a server whose parent exits on purpose (`nohup … &`) keeps running.
 */
function stopWithLauncher(): void {
  if (process.env.npm_command !== 'exec') return;
  const launcher = process.ppid;
  const watch = setInterval(() => {
    try {
      process.kill(launcher, 0);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') return;
      clearInterval(watch);
      stop('launcher exited');
    }
  }, 1000);
  watch.unref();
}
