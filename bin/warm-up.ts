/**
 * Start-up warm-up of the local server: before it listens, one synthetic 8 MiB blob goes through the same code a
 * cold pull's first layer takes — loopback "upstream" → fetch → `FsBlobStore.write` in a scratch directory,
 * streamed while filling through a loopback blob route, then the committed file once more — so the first real
 * blob does not pay undici's lazy load and unoptimised streaming code. Bounded, failures ignored, and nothing
 * touches the real store.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { Logger } from '@aws-lambda-powertools/logger';
import { sha256Digest } from '../shared/oci/digest.js';
import { BLOB_READ_CHUNK, openFsBlobStore } from '../shared/store/fs-blob-store.js';

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
export async function warmUp(logger: Logger): Promise<void> {
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

