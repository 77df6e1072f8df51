/**
 * The local server's blob route (`/_blobs/...`): serves blob bytes from the signed URLs the handler redirects to
 * (the local stand-in for S3 presigned URLs), with single-range `Range` support (RFC 9110 §14). Blob bodies are
 * read in 1 MiB chunks: with the 64 KiB default, serving a layer took about three times the CPU and the pull
 * benchmark's blob bodies were about 2× slower than Go's registry. A blob still being filled from the upstream in
 * this process is streamed while it arrives (fs-blob-store.ts, "Stream while filling"): 200 with `Content-Length`
 * when the upstream announced the size, chunked otherwise; when the fill fails the connection is destroyed, so the
 * client never gets a complete body of unverified bytes. A `Range` request for such a blob waits (bounded) for the
 * commit and is then served from the file as usual. A file is opened once per request: a GC that unpublishes the
 * blob meanwhile does not cut the read, and a URL handed out before it finds the copy kept in `trash/`.
 */
import type { FileHandle } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { Logger } from '@aws-lambda-powertools/logger';
import parseRange from 'range-parser';
import { RegistryError } from '../shared/oci/errors.js';
import type { Digest } from '../shared/oci/digest.js';
import { BLOB_READ_CHUNK, type FsBlobStore, type InProgressBlob } from '../shared/store/fs-blob-store.js';
import { writeError } from './write-error.js';

/** What the blob route needs: the filesystem store (absent when blobs live in S3) and the logger. */
export interface BlobRouteDeps {
  blobStore: FsBlobStore | undefined;
  logger: Logger;
}

/** A blob-route handler: `path` and `query` are the request URL's, already split. */
export type BlobRoute = (req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams) => Promise<void>;

/** The blob route over `deps`; see the file header. */
export function createBlobRoute({ blobStore, logger }: BlobRouteDeps): BlobRoute {
  /** Serves a signed blob URL: 200 whole, 206 one range, 416 unsatisfiable; anything else 404/405. */
  async function serveBlob(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams): Promise<void> {
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD') return writeError(res, new RegistryError('UNSUPPORTED'), method);
    if (!blobStore) return writeError(res, new RegistryError('BLOB_UNKNOWN', 'blobs are served by the storage backend'), method);
    const digest = blobStore.verifyUrl(path, query);
    if (!digest) return writeError(res, new RegistryError('DENIED', 'blob URL is invalid or expired'), method);
    // Opened once: a GC that unpublishes the blob meanwhile (renames it to trash/) does not disturb this read, and a
    // URL handed out before the GC still finds the trashed copy (see shared/store/fs-blob-reaper.ts).
    // A URL handed out while a write ran is bound to it (fs-blob-store.ts `locate`): that write's bytes as they
    // arrive, or the committed file only if that write committed it; never another write's copy of the digest.
    const fill = query.get('fill') ?? undefined;
    let fh = fill === undefined || blobStore.committedWrite(fill) ? await blobStore.openBlob(digest) : undefined;
    if (fh === undefined) {
      const filling = blobStore.openInProgress(digest, fill);
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
      // Committed meanwhile (between the open and openInProgress), or after the wait above.
      fh = fill === undefined || blobStore.committedWrite(fill) ? await blobStore.openBlob(digest) : undefined;
      // A validly signed URL was handed out by the registry for this digest, so a missing blob means its fill
      // failed after the redirect: 503 (retry), never 404 — clients read 404 as "does not exist" (podman
      // gives up, containerd silently goes around the cache).
      if (fh === undefined) {
        return writeError(res, new RegistryError('UNAVAILABLE', 'blob could not be fetched from the upstream; retry', { headers: { 'Retry-After': '10' } }), method);
      }
    }
    try {
      await serveFile(req, res, method, digest, fh);
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  /** Serves an opened blob file: 200 whole, 206 one range, 416 unsatisfiable. */
  async function serveFile(req: IncomingMessage, res: ServerResponse, method: string, digest: Digest, fh: FileHandle): Promise<void> {
    const { size } = await fh.stat();
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
    await pipeline(fh.createReadStream({ start, end, highWaterMark: BLOB_READ_CHUNK, autoClose: false }), res);
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

  return serveBlob;
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

