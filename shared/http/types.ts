/**
 * The runtime-independent request/response the core speaks. The Lambda adapter (`lambda-event.ts`) and the
 * node:http adapter (`bin/server.ts`, through the Lambda event) convert to and from these.
 */

/** An incoming request. `path` is the raw, still percent-encoded path (never decoded: `%2F` must not become `/`). */
export interface RegistryRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  /** Header names lower-cased; repeated headers joined with `, `. */
  headers: Record<string, string>;
  sourceIp?: string;
}

/** A response. Bodies are small (manifests, JSON): blob bytes never pass through here. */
export interface RegistryResponse {
  status: number;
  headers: Record<string, string>;
  body?: Uint8Array | string;
}

/** Header every registry response carries (Docker registry HTTP API v2). */
export const API_VERSION_HEADER = { 'Docker-Distribution-API-Version': 'registry/2.0' } as const;
