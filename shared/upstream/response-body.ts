/**
 * Small readers of upstream responses used by the upstream client: a size-capped body read (manifests,
 * referrers indexes, tag lists, token answers) and the `Link: <...>; rel="next"` pagination header of tag lists.
 * Each turns malformed input into `undefined` or an `UpstreamError('unavailable')`.
 */
import type { Readable } from 'node:stream';
import { UpstreamError, type UpstreamFailure } from './errors.js';

/**
 * Reads a response body, failing once it passes `maxBytes` (the rest is not read: the stream is destroyed).
 * `what` names the body in errors (`manifest`, `tags list`, …); `tooLarge` is the failure when it passes the limit.
 * @throws UpstreamError `tooLarge` (default `unavailable`) when the body is too large, `unavailable` when it breaks off
 */
export async function readCapped(body: Readable, maxBytes: number, what = 'manifest', tooLarge: UpstreamFailure = 'unavailable'): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of body as AsyncIterable<Uint8Array>) {
      total += chunk.length;
      if (total > maxBytes) throw new UpstreamError(tooLarge, `${what} larger than ${maxBytes} bytes`);
      chunks.push(Buffer.from(chunk));
    }
  } catch (err) {
    body.destroy();
    if (err instanceof UpstreamError) throw err;
    throw new UpstreamError('unavailable', `${what} body: ${(err as Error).message}`);
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
