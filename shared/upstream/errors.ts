/**
 * Upstream failures, classified once, and their mapping to OCI errors. Upstream bodies are never passed
 * through to clients.
 */
import { RegistryError, type ErrorCode } from '../oci/errors.js';

/**
 * What went wrong upstream. `unavailable` covers 5xx, timeouts, refused connections and bad answers;
 * `too-large`: a manifest past the caller's size limit (client.ts `getManifest`), a refusal of ours that
 * retrying cannot change.
 */
export type UpstreamFailure = 'not-found' | 'rate-limited' | 'unavailable' | 'denied' | 'too-large';

/** Thrown by the upstream client; the cache decides whether to serve stale content or map it to an error. */
export class UpstreamError extends Error {
  constructor(
    readonly failure: UpstreamFailure,
    message: string,
    readonly status?: number,
    /** `Retry-After` from the upstream, as sent (seconds or an HTTP date). */
    readonly retryAfter?: string,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }
}

/** Classifies an upstream HTTP status (called for every non-2xx answer after the auth dance). */
export function upstreamErrorFor(status: number, what: string, retryAfter?: string | null): UpstreamError {
  if (status === 404) return new UpstreamError('not-found', `${what}: upstream answered 404`, status);
  // Registries answer 401/403 for repositories that do not exist (Docker Hub does), so both are "not found"
  // to the client; the log keeps the real status.
  if (status === 401 || status === 403) return new UpstreamError('denied', `${what}: upstream answered ${status}`, status);
  if (status === 429) return new UpstreamError('rate-limited', `${what}: upstream answered 429`, status, retryAfter ?? undefined);
  return new UpstreamError('unavailable', `${what}: upstream answered ${status}`, status, retryAfter ?? undefined);
}

/**
 * True for the upstream's "no such object": 404, or the 401/403 registries answer for what does not exist (see
 * {@link upstreamErrorFor}). A blob fill that meets it never started: it is no failed fill (blob-fill.ts).
 */
export function isUpstreamUnknown(err: unknown): err is UpstreamError {
  return err instanceof UpstreamError && (err.failure === 'not-found' || err.failure === 'denied');
}

/**
 * Maps an upstream failure to the OCI error the client sees (other errors are returned unchanged).
 * `notFound` is the code for this kind of object (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, `NAME_UNKNOWN`).
 * Unavailable → 503 `UNAVAILABLE` (not 404: clients read 404 as "does not exist"). Too large → 502
 * `MANIFEST_INVALID` (only manifests are refused for their size; no `Retry-After`: retrying cannot help).
 */
export function toRegistryError(err: unknown, notFound: ErrorCode): unknown {
  // RegistryErrors pass as they are; anything else is a bug and stays itself (500 UNKNOWN, logged).
  if (!(err instanceof UpstreamError)) return err;
  switch (err.failure) {
    case 'not-found':
    case 'denied':
      return new RegistryError(notFound, undefined, { cause: err });
    case 'too-large':
      return new RegistryError('MANIFEST_INVALID', err.message, { status: 502, cause: err });
    case 'rate-limited':
      return new RegistryError('TOOMANYREQUESTS', 'upstream registry rate limit reached', {
        headers: err.retryAfter ? { 'Retry-After': err.retryAfter } : {},
        cause: err,
      });
    default:
      return new RegistryError('UNAVAILABLE', 'upstream registry unavailable', { headers: { 'Retry-After': err.retryAfter ?? '30' }, cause: err });
  }
}
