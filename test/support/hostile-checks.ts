/**
 * What every answer to a hostile request must satisfy, and how a request reaches the app: directly, or through
 * the API Gateway HTTP API v2 event (encoded path, or decoded the way HTTP APIs reportedly deliver `rawPath`).
 */
import { createHash } from 'node:crypto';
import { buildHttpApiEvent, fromHttpApiEvent, toHttpApiResult } from '../../shared/http/lambda-event.js';
import type { RegistryRequest, RegistryResponse } from '../../shared/http/types.js';
import type { HostileRequest } from './hostile-requests.js';

/** Error codes of the OCI distribution spec ("Error Codes"). */
export const SPEC_CODES = new Set([
  'BLOB_UNKNOWN', 'BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_BLOB_UNKNOWN', 'MANIFEST_INVALID',
  'MANIFEST_UNKNOWN', 'NAME_INVALID', 'NAME_UNKNOWN', 'SIZE_INVALID', 'UNAUTHORIZED', 'DENIED', 'UNSUPPORTED', 'TOOMANYREQUESTS',
]);

const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const DIGEST = 'sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}';
/** What an upstream may ever be asked: only names, tags and digests that passed the grammar. */
export const UPSTREAM_PATH = new RegExp(
  `^/v2/${COMPONENT}(?:/${COMPONENT})*/(?:manifests/(?:[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}|${DIGEST})|blobs/(?:${DIGEST})|tags/list|referrers/(?:${DIGEST}))(?:\\?.*)?$`,
);

export const bodyText = (res: RegistryResponse) => (res.body === undefined ? '' : Buffer.from(res.body as Uint8Array).toString('utf8'));
/** The first error code of an error answer with a body. */
export const codeOf = (res: RegistryResponse) =>
  res.status >= 400 && res.body !== undefined ? (JSON.parse(bodyText(res)) as { errors: Array<{ code: string }> }).errors[0]?.code : undefined;
const sha256 = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * API Gateway HTTP APIs reportedly hand the Lambda a percent-DECODED `rawPath`, cut at a decoded `?` (REST APIs,
 * function URLs and the local server keep it encoded), so decoded `%2F`/`%2e%2e`/`%00` must meet the grammar too.
 */
export const decodedLikeHttpApi = (path: string) =>
  path
    .replace(/(?:%[0-9a-fA-F]{2})+/g, (m) => {
      try {
        return decodeURIComponent(m);
      } catch {
        return m;
      }
    })
    .split('?')[0];

const lowerHeaders = (hs: Record<string, string>) => Object.fromEntries(Object.entries(hs).map(([k, v]) => [k.toLowerCase(), v]));

/** How a request reaches the app. */
export type Via = 'direct' | 'event' | 'event-decoded';

/** What the checks need to know about the app under test. */
export interface CheckContext {
  app: (req: RegistryRequest) => Promise<RegistryResponse>;
  /** Reads the bytes behind a `/_blobs/...` location. */
  readLocation(location: string): Buffer;
  /** Strings no answer may contain (the data directory, the working directory). */
  secrets: string[];
  /** Digests of cached manifests (the blobs route must never serve one). */
  manifestDigests: Set<string>;
}

/** Builds `send` (request → answer + problems) and `problemsOf` for one app. */
export function createChecks(ctx: CheckContext) {
  /** Everything wrong with one answer (empty when it is fine). `seen` is the request as the app got it. */
  async function problemsOf(seen: RegistryRequest, res: RegistryResponse): Promise<string[]> {
    const p: string[] = [];
    const head = seen.method === 'HEAD';
    const text = bodyText(res);
    if (!Number.isInteger(res.status) || res.status < 200 || res.status >= 500) p.push(`status ${res.status} ${text.slice(0, 200)}`);
    if (res.headers['Docker-Distribution-API-Version'] !== 'registry/2.0') p.push('no Docker-Distribution-API-Version header');
    for (const [k, v] of Object.entries(res.headers)) {
      if (typeof v !== 'string') p.push(`header ${k} is not a string`);
      else if (/[\r\n\0]/.test(v)) p.push(`header ${k} holds CR/LF/NUL`);
      // Self-URLs (Link, the hop Location) carry the request's own query back (reported: unknown parameters
      // included); they may be as long as the request, no longer. Every other header stays short.
      else if (v.length > (k === 'Link' || k === 'Location' ? 4096 + seen.path.length + 2 * String(seen.query).length : 4096)) p.push(`header ${k} is ${v.length} chars long`);
    }
    if (head && res.body !== undefined && Buffer.from(res.body as Uint8Array).length > 0) p.push('HEAD answer has a body');
    if (!head && res.body !== undefined && res.headers['Content-Length'] !== String(Buffer.byteLength(res.body as Uint8Array))) {
      p.push(`Content-Length ${res.headers['Content-Length']} for a ${Buffer.byteLength(res.body as Uint8Array)}-byte body`);
    }
    if (res.status === 405 && res.headers.Allow !== 'GET, HEAD') p.push('405 without Allow: GET, HEAD');
    if (res.status >= 400) {
      if (!/^application\/json\b/.test(res.headers['Content-Type'] ?? '')) p.push(`error Content-Type ${res.headers['Content-Type']}`);
      if (!/^[1-9]\d*$/.test(res.headers['Content-Length'] ?? '')) p.push(`error Content-Length ${res.headers['Content-Length']}`);
      if (!head) p.push(...errorBodyProblems(text));
    }
    // Successes serve what they say: a manifest hashes to its digest, a blob location holds the blob's bytes.
    if (res.status === 200 && !head && /\/manifests\/[^/]*$/.test(seen.path)) {
      const digest = sha256(Buffer.from(res.body as Uint8Array));
      if (res.headers['Docker-Content-Digest'] !== digest) p.push(`manifest body hashes to ${digest}, header says ${res.headers['Docker-Content-Digest']}`);
    }
    if (res.status >= 300 && res.status < 400) {
      const location = res.headers.Location ?? '';
      if (location.startsWith('/_blobs/')) {
        const digest = sha256(ctx.readLocation(location));
        if (digest !== res.headers['Docker-Content-Digest'] || !seen.path.endsWith(`/blobs/${digest}`)) p.push(`blob location holds ${digest}`);
        if (ctx.manifestDigests.has(digest)) p.push('the blobs route served a manifest');
      } else if (!location.startsWith(`${seen.path}?`)) {
        p.push(`redirect to ${location.slice(0, 100)}`);
      }
    }
    if (res.headers.Link !== undefined && !/^<\/v2\/[^<>\s]*>; rel="next"$/.test(res.headers.Link)) p.push(`Link ${res.headers.Link.slice(0, 100)}`);
    if (res.status === 200 && !head && /\/(tags\/list|_catalog)$/.test(seen.path)) {
      const list = JSON.parse(text) as { tags?: unknown; repositories?: unknown };
      if (!Array.isArray(list.tags ?? list.repositories)) p.push(`listing without a list: ${text.slice(0, 100)}`);
    }
    if (/\n\s+at |\bError:|node:internal|\.[jt]s:\d+|node_modules/.test(text) || ctx.secrets.some((s) => text.includes(s))) {
      p.push(`internal detail in body: ${text.slice(0, 200)}`);
    }
    // HEAD answers carry the headers GET would (a blob HEAD 200 differs from GET's 307 on purpose).
    if (head && !(res.status === 200 && /\/blobs\/[^/]*$/.test(seen.path))) {
      const get = await ctx.app({ ...seen, method: 'GET' });
      if (get.status < 300 || get.status >= 400) {
        if (get.status !== res.status) p.push(`HEAD ${res.status} but GET ${get.status}`);
        else if (get.headers['Content-Length'] !== res.headers['Content-Length'] || get.headers['Content-Type'] !== res.headers['Content-Type']) {
          p.push(`HEAD ${res.headers['Content-Length']} ${res.headers['Content-Type']} but GET ${get.headers['Content-Length']} ${get.headers['Content-Type']}`);
        }
      }
    }
    return p;
  }

  /** Sends one request the chosen way; through the event, the Lambda result must carry status and body too. */
  async function send(r: HostileRequest, via: Via): Promise<{ seen: RegistryRequest; res: RegistryResponse; problems: string[] }> {
    const seen =
      via === 'direct'
        ? { method: r.method, path: r.path, query: new URLSearchParams(r.query), headers: lowerHeaders(r.headers) }
        : fromHttpApiEvent(buildHttpApiEvent({ method: r.method, path: via === 'event' ? r.path : decodedLikeHttpApi(r.path), rawQueryString: r.query, headers: r.headers }));
    const res = await ctx.app(seen);
    const problems = await problemsOf(seen, res);
    if (via !== 'direct') {
      const result = toHttpApiResult(res);
      const bytes = Buffer.from(result.body ?? '', result.isBase64Encoded ? 'base64' : 'utf8');
      if (result.statusCode !== res.status || !bytes.equals(res.body === undefined ? Buffer.alloc(0) : Buffer.from(res.body as Uint8Array))) {
        problems.push('the Lambda result does not carry the status and body');
      }
    }
    return { seen, res, problems };
  }

  return { send, problemsOf };
}

/** An error body: OCI JSON, spec codes, short messages and details (nothing echoed unbounded). */
function errorBodyProblems(text: string): string[] {
  const p: string[] = [];
  if (text.length > 2048) p.push(`error body of ${text.length} chars`);
  try {
    const { errors } = JSON.parse(text) as { errors: Array<{ code: unknown; message: unknown; detail?: unknown }> };
    if (!Array.isArray(errors) || errors.length === 0) return [...p, 'no errors[]'];
    for (const e of errors) {
      if (!SPEC_CODES.has(e.code as string)) p.push(`code ${String(e.code)} is not a spec code`);
      if (typeof e.message !== 'string' || e.message.length > 200) p.push('bad message');
      if (e.detail !== undefined && JSON.stringify(e.detail).length > 400) p.push(`detail of ${JSON.stringify(e.detail).length} chars`);
    }
  } catch {
    p.push(`error body is not JSON: ${text.slice(0, 100)}`);
  }
  return p;
}
