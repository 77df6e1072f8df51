/**
 * Embedded blob store: content-addressed files under `<root>/blobs/<algorithm>/<hex>`. A write streams into
 * `<root>/tmp/`, hashing as it goes, fsyncs, and renames into place only when the digest (and size) match, so
 * a blob is visible whole or not at all. Memory stays flat whatever the blob size (stream backpressure).
 *
 * Clients get blobs through a signed, short-lived URL to the local server's own blob route
 * (`/_blobs/<algorithm>/<hex>?expires=<unix s>&signature=<hmac>`), so the registry handler answers a blob hit
 * with a 307 exactly as on AWS (where the URL is a presigned S3 GET).
 */
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hasherFor, parseDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { BlobStore } from './ports.js';

/** Route prefix of the local server's blob endpoint. */
export const LOCAL_BLOB_ROUTE = '/_blobs/';

/** The filesystem blob store plus what the local server needs to serve its signed URLs. */
export interface FsBlobStore extends BlobStore {
  /** Absolute path of a committed blob (whether or not it exists). */
  pathOf(digest: Digest): string;
  /**
   * Checks a `/_blobs/...` URL's path and query; returns the digest when the signature is valid and unexpired.
   */
  verifyUrl(path: string, query: URLSearchParams, nowSeconds?: number): Digest | undefined;
}

/**
 * Opens the store at `root`. `urlTtlSeconds` is the lifetime of the signed URLs (default 900 s, like the S3
 * presigned URLs); `signingKey` defaults to random bytes per process (URLs die with the process, which is fine
 * for URLs that live minutes).
 */
export async function openFsBlobStore(root: string, opts: { urlTtlSeconds?: number; signingKey?: Buffer } = {}): Promise<FsBlobStore> {
  const ttl = opts.urlTtlSeconds ?? 900;
  const key = opts.signingKey ?? randomBytes(32);
  await fs.mkdir(join(root, 'tmp'), { recursive: true });
  await fs.mkdir(join(root, 'blobs', 'sha256'), { recursive: true });
  await fs.mkdir(join(root, 'blobs', 'sha512'), { recursive: true });
  // Leftovers of a crash are never visible (they are not at their final path); clear them.
  for (const f of await fs.readdir(join(root, 'tmp'))) await fs.rm(join(root, 'tmp', f), { force: true });

  const pathOf = (digest: Digest) => {
    const { algorithm, encoded } = parseDigest(digest)!;
    return join(root, 'blobs', algorithm, encoded);
  };
  const sign = (digest: Digest, expires: number) => createHmac('sha256', key).update(`${digest}\n${expires}`).digest('base64url');

  return {
    pathOf,
    async stat(digest) {
      try {
        const st = await fs.stat(pathOf(digest));
        return { size: st.size };
      } catch {
        return undefined;
      }
    },
    async write(digest, source: Readable, expectedSize) {
      const tmp = join(root, 'tmp', randomUUID());
      const hash = hasherFor(digest);
      let size = 0;
      const tap = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          size += chunk.length;
          if (expectedSize !== undefined && size > expectedSize) return cb(new RegistryError('SIZE_INVALID', 'blob is larger than its descriptor'));
          hash.update(chunk);
          cb(null, chunk);
        },
      });
      try {
        const out = createWriteStream(tmp, { flags: 'wx' });
        await pipeline(source, tap, out);
        if (expectedSize !== undefined && size !== expectedSize) throw new RegistryError('SIZE_INVALID', 'blob size does not match its descriptor');
        const actual = `${parseDigest(digest)!.algorithm}:${hash.digest('hex')}`;
        if (actual !== digest) throw new RegistryError('DIGEST_INVALID', 'upstream blob did not match its digest', { status: 502 });
        const fh = await fs.open(tmp, 'r+');
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
        await fs.rename(tmp, pathOf(digest));
        return { size };
      } finally {
        await fs.rm(tmp, { force: true });
      }
    },
    async locate(digest) {
      const { algorithm, encoded } = parseDigest(digest)!;
      const expires = Math.floor(Date.now() / 1000) + ttl;
      return { kind: 'redirect', url: `${LOCAL_BLOB_ROUTE}${algorithm}/${encoded}?expires=${expires}&signature=${sign(digest, expires)}` };
    },
    verifyUrl(path, query, nowSeconds = Date.now() / 1000) {
      const m = /^\/_blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(path);
      if (!m) return undefined;
      const digest = `${m[1]}:${m[2]}`;
      if (!parseDigest(digest)) return undefined;
      const expires = Number(query.get('expires'));
      const signature = query.get('signature') ?? '';
      if (!Number.isInteger(expires) || expires < nowSeconds) return undefined;
      const want = Buffer.from(sign(digest as Digest, expires));
      const got = Buffer.from(signature);
      return want.length === got.length && timingSafeEqual(want, got) ? (digest as Digest) : undefined;
    },
  };
}
