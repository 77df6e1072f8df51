/**
 * Small readers of upstream responses used by the upstream client: a size-capped body read (manifests and
 * referrers indexes), the `Link: <...>; rel="next"` pagination header of tag lists, and undici's header values
 * as one string. Each turns malformed input into `undefined`/`null` or an `UpstreamError('unavailable')`.
 */
import type { Dispatcher } from 'undici';
import { UpstreamError } from './errors.js';

/** Reads a response body, failing once it passes `maxBytes`. */
export async function readCapped(res: Response, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      total += chunk.length;
      if (total > maxBytes) throw new UpstreamError('unavailable', `manifest larger than ${maxBytes} bytes`);
      chunks.push(Buffer.from(chunk));
    }
  } catch (err) {
    if (err instanceof UpstreamError) throw err;
    throw new UpstreamError('unavailable', `manifest body: ${(err as Error).message}`);
  }
  return Buffer.concat(chunks);
}

/** Reads `n`/`last` from an RFC 5988 `Link: <...?n=..&last=..>; rel="next"` header. */
export function parseNextLink(link: string | null): { n?: number; last: string } | undefined {
  if (!link) return undefined;
  const m = /<([^>]*)>\s*;\s*rel="?next"?/.exec(link);
  if (!m) return undefined;
  const params = new URL(m[1], 'http://x').searchParams;
  const last = params.get('last');
  if (last === null) return undefined;
  const n = params.get('n');
  return { last, ...(n !== null && /^\d+$/.test(n) ? { n: Number(n) } : {}) };
}

/** A response header as one string (undici gives repeated headers as arrays); null when absent. */
export function headerOf(res: Dispatcher.ResponseData, name: string): string | null {
  const v = res.headers[name];
  return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
}
