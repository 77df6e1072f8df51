/**
 * The local server's one error writer for responses it answers itself (the blob route, and requests that fail
 * before or outside the Lambda handler): the spec's `{"errors":[...]}` body and status from `errorResponse`,
 * so the node:http edge speaks the same error vocabulary as the handler.
 */
import type { ServerResponse } from 'node:http';
import { errorResponse } from '../shared/http/error-response.js';
import type { RegistryError } from '../shared/oci/errors.js';

/** Writes `err` as the OCI error response (status, headers, body) for a request with `method`. */
export function writeError(res: ServerResponse, err: RegistryError, method: string): void {
  const e = errorResponse(err, method);
  res.writeHead(e.status, e.headers);
  res.end(e.body);
}

