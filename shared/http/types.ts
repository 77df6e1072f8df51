/**
 * The runtime-independent request/response the core speaks. The Lambda adapter (`lambda-event.ts`) and the
 * node:http adapter (`bin/server.ts`, through the Lambda event) convert to and from these.
 */

/**
 * An incoming request. `path` is the path as delivered: raw and percent-encoded from the local server (never
 * decoded here: `%2F` must not become `/`); API Gateway HTTP APIs are reported to deliver `rawPath` decoded. Either
 * way the name/tag/digest grammar runs on exactly what arrives, before any key or upstream URL is built.
 */
export interface RegistryRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  /** Header names lower-cased; repeated headers joined with `, `. */
  headers: Record<string, string>;
  sourceIp?: string;
  /** The request body, when there is one (only the token endpoint's POST form reads it). */
  body?: Uint8Array;
}

/** A response. Bodies are small (manifests, JSON): blob bytes never pass through here. */
export interface RegistryResponse {
  status: number;
  headers: Record<string, string>;
  body?: Uint8Array | string;
}

/** Header every registry response carries (Docker registry HTTP API v2). */
export const API_VERSION_HEADER = { 'Docker-Distribution-API-Version': 'registry/2.0' } as const;
