/**
 * Storage exhaustion, recognised once: a full disk (`ENOSPC`), an exhausted quota (`EDQUOT`), or SQLite's own
 * `SQLITE_FULL` (better-sqlite3's `SqliteError.code`). The registry answers these with a retryable 503
 * `UNAVAILABLE` and a log line with `event: "storage-full"`, never 500 `UNKNOWN`.
 */

import { RegistryError } from '../oci/errors.js';

/** Error codes that mean "no room left to store this". */
const STORAGE_FULL_CODES = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);

/** True when `err`, or an error in its `cause` chain, is a storage-exhaustion error. */
export function isStorageFull(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (STORAGE_FULL_CODES.has((e as NodeJS.ErrnoException).code ?? '')) return true;
  }
  return false;
}

/** The client's answer to storage exhaustion: 503 `UNAVAILABLE`, `Retry-After` in seconds (at least 1). */
export function storageFullError(retryAfterSeconds: number, cause?: unknown): RegistryError {
  return new RegistryError('UNAVAILABLE', 'the cache is out of storage space; retry later', {
    headers: { 'Retry-After': String(Math.max(1, Math.ceil(retryAfterSeconds))) },
    cause,
  });
}
