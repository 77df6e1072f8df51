/**
 * The one writer of OCI error bodies: `{"errors":[{"code","message","detail"}]}` (OCI distribution spec,
 * "Error Codes"). Anything that is not a RegistryError becomes 500 `UNKNOWN` with no internal detail.
 */
import { RegistryError } from '../oci/errors.js';
import { API_VERSION_HEADER, type RegistryResponse } from './types.js';

/** Builds the error response for any thrown value; `unexpected` is true when it was not a RegistryError. */
export function errorResponse(err: unknown, method = 'GET'): RegistryResponse & { unexpected: boolean } {
  const e = err instanceof RegistryError ? err : new RegistryError('UNKNOWN', 'internal error');
  const body = JSON.stringify({ errors: [{ code: e.code, message: e.message, ...(e.detail === undefined ? {} : { detail: e.detail }) }] });
  return {
    status: e.status,
    headers: {
      ...API_VERSION_HEADER,
      'Content-Type': 'application/json; charset=utf-8',
      'Content-Length': String(Buffer.byteLength(body)),
      ...e.headers,
    },
    body: method === 'HEAD' ? undefined : body,
    unexpected: !(err instanceof RegistryError),
  };
}
