/**
 * Signed URLs of the local server's blob route: `/_blobs/<algorithm>/<hex>?expires=<unix s>&signature=<hmac>`,
 * an HMAC-SHA256 over the digest and expiry with the store's signing key. The filesystem blob store hands these out
 * from `locate` (so a blob hit is a 307, exactly as with presigned S3 URLs on AWS) and the blob route checks them
 * with {@link verifyBlobUrl} (constant-time comparison, expired URLs rejected).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { parseDigest, type Digest } from '../oci/digest.js';

/** Route prefix of the local server's blob endpoint. */
export const LOCAL_BLOB_ROUTE = '/_blobs/';

/**
 * The HMAC signature (base64url) of `digest` valid until `expires` (unix seconds), bound to the write `fill` when
 * given (a URL handed out while that write's bytes are not yet verified: see fs-blob-store.ts `locate`).
 */
export function signBlobUrl(key: Buffer, digest: Digest, expires: number, fill?: string): string {
  return createHmac('sha256', key).update(fill === undefined ? `${digest}\n${expires}` : `${digest}\n${expires}\n${fill}`).digest('base64url');
}

/** A signed blob-route URL (path and query) for `digest`, valid for `ttlSeconds` from now, bound to `fill` if given. */
export function signedBlobUrl(key: Buffer, digest: Digest, ttlSeconds: number, fill?: string): string {
  const { algorithm, encoded } = parseDigest(digest)!;
  const expires = Math.floor(Date.now() / 1000) + ttlSeconds;
  const bound = fill === undefined ? '' : `&fill=${fill}`;
  return `${LOCAL_BLOB_ROUTE}${algorithm}/${encoded}?expires=${expires}${bound}&signature=${signBlobUrl(key, digest, expires, fill)}`;
}

/**
 * Checks a `/_blobs/...` URL's path and query; returns the digest when the signature is valid and unexpired at
 * `nowSeconds` (unix seconds).
 */
export function verifyBlobUrl(key: Buffer, path: string, query: URLSearchParams, nowSeconds: number): Digest | undefined {
  const m = /^\/_blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(path);
  if (!m) return undefined;
  const digest = `${m[1]}:${m[2]}`;
  if (!parseDigest(digest)) return undefined;
  const expires = Number(query.get('expires'));
  const signature = query.get('signature') ?? '';
  if (!Number.isInteger(expires) || expires < nowSeconds) return undefined;
  const want = Buffer.from(signBlobUrl(key, digest as Digest, expires, query.get('fill') ?? undefined));
  const got = Buffer.from(signature);
  return want.length === got.length && timingSafeEqual(want, got) ? (digest as Digest) : undefined;
}
