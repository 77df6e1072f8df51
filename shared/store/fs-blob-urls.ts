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

/** The HMAC signature (base64url) of `digest` valid until `expires` (unix seconds). */
export function signBlobUrl(key: Buffer, digest: Digest, expires: number): string {
  return createHmac('sha256', key).update(`${digest}\n${expires}`).digest('base64url');
}

/** A signed blob-route URL (path and query) for `digest`, valid for `ttlSeconds` from now. */
export function signedBlobUrl(key: Buffer, digest: Digest, ttlSeconds: number): string {
  const { algorithm, encoded } = parseDigest(digest)!;
  const expires = Math.floor(Date.now() / 1000) + ttlSeconds;
  return `${LOCAL_BLOB_ROUTE}${algorithm}/${encoded}?expires=${expires}&signature=${signBlobUrl(key, digest, expires)}`;
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
  const want = Buffer.from(signBlobUrl(key, digest as Digest, expires));
  const got = Buffer.from(signature);
  return want.length === got.length && timingSafeEqual(want, got) ? (digest as Digest) : undefined;
}
