/**
 * What the test reverse proxies (./counting-proxy.ts, ./fault-proxy.ts) share: which headers they forward,
 * their loopback listener, the log of the requests they saw, and how they stop.
 */
import type http from 'node:http';
import type { AddressInfo } from 'node:net';

/** RFC 7230 §6.1 hop-by-hop headers, never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * `raw` (a message's rawHeaders: case, order and repeated headers such as several Link headers kept) without
 * the hop-by-hop headers and those the Connection header names; flat `[name, value, ...]`, as `writeHead` takes it.
 */
export function forwardableHeaders(raw: string[]): string[] {
  const connectionTokens = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].toLowerCase() === 'connection') {
      for (const t of raw[i + 1].split(',')) connectionTokens.add(t.trim().toLowerCase());
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    if (HOP_BY_HOP.has(k) || connectionTokens.has(k)) continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

/** {@link forwardableHeaders} as the headers of an outgoing request: lower-case names, repeated ones as arrays. */
export function outgoingHeaders(raw: string[]): Record<string, string | string[]> {
  const h: Record<string, string | string[]> = {};
  const flat = forwardableHeaders(raw);
  for (let i = 0; i < flat.length; i += 2) {
    const k = flat[i].toLowerCase();
    const prev = h[k];
    h[k] = prev === undefined ? flat[i + 1] : Array.isArray(prev) ? [...prev, flat[i + 1]] : [prev, flat[i + 1]];
  }
  return h;
}

/** The requests a proxy saw, in order. `reset()` empties this same array. */
export interface RequestLog<R> {
  requests: R[];
  /** Number of recorded requests, optionally only those matching `filter`. */
  count(filter?: (r: R) => boolean): number;
  /** Forget all recorded requests. */
  reset(): void;
}

/** A {@link RequestLog} over `requests` (the array the proxy pushes to). */
export function requestLog<R>(requests: R[]): RequestLog<R> {
  return {
    requests,
    count: (filter) => (filter ? requests.filter(filter).length : requests.length),
    reset: () => {
      requests.length = 0;
    },
  };
}

/** Listens on 127.0.0.1:0 (keep-alive timeout 5 s); resolves with `http://127.0.0.1:PORT`. */
export async function listenOnLoopback(server: http.Server): Promise<string> {
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** An idempotent stop: closes the listener and every open connection, and destroys the upstream agent. */
export function stopper(server: http.Server, agent: http.Agent, before?: () => void): () => Promise<void> {
  let stopped: Promise<void> | undefined;
  return () => {
    stopped ??= new Promise<void>((resolve) => {
      before?.();
      server.close(() => resolve());
      server.closeAllConnections();
      agent.destroy();
    });
    return stopped;
  };
}
