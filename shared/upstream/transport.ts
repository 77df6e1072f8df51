/**
 * One HTTP exchange with an upstream host, below redirects and auth: {@link UpstreamSend}. The client sends
 * every upstream request through one such function (exchange.ts wraps it once per client: the one place to
 * observe every upstream request). The default is undici's `request` over the rule's dispatcher (dispatcher.ts:
 * address checks, outbound proxy; a Node stream body and kept-alive connections, about half the CPU of fetch +
 * Readable.fromWeb on large blobs). {@link fetchSend} adapts a `fetch` (tests answer in-process with it).
 * Redirects are never followed here.
 */
import { Readable } from 'node:stream';
import { request, type Dispatcher } from 'undici';

/** A request to one URL. Header names in any case. */
export interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  url: URL;
  headers: Record<string, string>;
  signal: AbortSignal;
}

/** A response whose body the caller consumes or discards ({@link discard}). */
export interface UpstreamResponse {
  status: number;
  /** A header as one string (repeated headers joined by `, `), null when absent. */
  header(name: string): string | null;
  body: Readable;
}

/** Sends one request; rejects on network failure (refused address, reset, abort), resolves on any status. */
export type UpstreamSend = (req: UpstreamRequest) => Promise<UpstreamResponse>;

/**
 * Drops a response body: a short one (a 401 or redirect body) is read out so the connection is kept alive;
 * past 128 KiB (undici's `dump` limit: a blob body nobody wants) the connection is cut instead. Never throws.
 */
export async function discard(res: UpstreamResponse): Promise<void> {
  const body = res.body as Readable & { dump?: () => Promise<void> };
  body.on('error', () => undefined);
  if (body.dump) await body.dump().catch(() => undefined);
  else body.destroy();
}

/** {@link UpstreamSend} over undici's `request` with `dispatcher`. */
export function undiciSend(dispatcher: Dispatcher): UpstreamSend {
  return async ({ method, url, headers, signal }) => {
    const res = await request(url, { method, headers, signal, dispatcher });
    return {
      status: res.statusCode,
      header(name) {
        const v = res.headers[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
      },
      body: res.body,
    };
  };
}

/** {@link UpstreamSend} over a `fetch` implementation (`redirect: 'manual'`). */
export function fetchSend(fetchImpl: typeof fetch): UpstreamSend {
  return async ({ method, url, headers, signal }) => {
    const res = await fetchImpl(url, { method, headers, signal, redirect: 'manual' });
    const body = res.body ? Readable.fromWeb(res.body as import('node:stream/web').ReadableStream) : Readable.from([]);
    return { status: res.status, header: (name) => res.headers.get(name), body };
  };
}
