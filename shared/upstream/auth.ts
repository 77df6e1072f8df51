/**
 * Upstream authentication (Docker token auth spec; distribution `registry/client/auth`):
 * anonymous, Basic, and Bearer tokens fetched from the challenge's realm, cached by realm+service+scope until
 * their expiry. Credentials go only to the rule's upstream origin and its token realm (which may be another
 * host: Docker Hub's is auth.docker.io); a token endpoint's redirect to another origin drops them (fetch's
 * cross-origin redirect rule). Credentials are asked for only when the upstream challenges, so a lazy provider
 * (a Secrets Manager secret) is never read for an anonymous upstream.
 */
import type { Challenge } from './challenge.js';
import { UpstreamError, upstreamErrorFor } from './errors.js';

/** Upstream credentials of a rule. */
export interface Credentials {
  username: string;
  password: string;
}

/** Gives a rule's credentials when needed (e.g. read from Secrets Manager and cached); `undefined`: anonymous. */
export type CredentialsProvider = () => Promise<Credentials | undefined>;

/** Seconds a token lives when the token endpoint gives no `expires_in` (Docker token spec default: 60). */
const DEFAULT_TOKEN_SECONDS = 60;
/** Seconds before expiry at which a cached token is no longer used. */
const EXPIRY_MARGIN_SECONDS = 5;

/** Caches tokens and the last challenge seen, so later requests skip the 401 round trip. */
export interface TokenAuth {
  /** `Authorization` header for a request needing `scope`, when one is known without a round trip. */
  headerFor(scope: string): Promise<string | undefined>;
  /** Handles a 401 challenge; returns the header to retry with, or undefined when it cannot help. */
  answer(challenge: Challenge, scope: string): Promise<string | undefined>;
}

/**
 * Creates the auth state for one upstream.
 * `fetchImpl` is injectable for tests; defaults to global fetch. Timeouts are in milliseconds.
 */
export function createTokenAuth(opts: {
  credentials?: Credentials | CredentialsProvider;
  timeoutMs: number;
  now?: () => number;
  fetchImpl?: typeof fetch;
}): TokenAuth {
  const now = opts.now ?? Date.now;
  const doFetch = opts.fetchImpl ?? fetch;
  const tokens = new Map<string, { header: string; expiresAt: number }>();
  const inflight = new Map<string, Promise<string>>();
  let lastChallenge: Challenge | undefined;
  const basicHeader = async () => {
    const c = typeof opts.credentials === 'function' ? await opts.credentials() : opts.credentials;
    return c && `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
  };

  const keyOf = (ch: Challenge, scope: string) => `${ch.params.realm}\n${ch.params.service ?? ''}\n${scope}`;

  async function fetchToken(ch: Challenge, scope: string): Promise<string> {
    const realm = ch.params.realm;
    if (!realm || !/^https?:\/\//.test(realm)) throw new UpstreamError('unavailable', 'upstream challenge has no usable realm');
    const url = new URL(realm);
    if (ch.params.service) url.searchParams.set('service', ch.params.service);
    if (scope) url.searchParams.set('scope', scope);
    const basic = await basicHeader();
    let res: Response;
    try {
      res = await doFetch(url, {
        headers: { Accept: 'application/json', ...(basic ? { Authorization: basic } : {}) },
        signal: AbortSignal.timeout(opts.timeoutMs),
        redirect: 'follow',
      });
    } catch (err) {
      throw new UpstreamError('unavailable', `token endpoint unreachable: ${(err as Error).message}`);
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw upstreamErrorFor(res.status, 'token request', res.headers.get('retry-after'));
    }
    let body: { token?: string; access_token?: string; expires_in?: number };
    try {
      body = (await res.json()) as typeof body;
    } catch {
      throw new UpstreamError('unavailable', 'token endpoint answered non-JSON');
    }
    const token = body.token ?? body.access_token;
    if (!token) throw new UpstreamError('unavailable', 'token endpoint answered no token');
    const seconds = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    const header = `Bearer ${token}`;
    tokens.set(keyOf(ch, scope), { header, expiresAt: now() + (seconds - EXPIRY_MARGIN_SECONDS) * 1000 });
    return header;
  }

  async function bearer(ch: Challenge, scope: string): Promise<string> {
    const key = keyOf(ch, scope);
    const cached = tokens.get(key);
    if (cached && cached.expiresAt > now()) return cached.header;
    let p = inflight.get(key);
    if (!p) {
      p = fetchToken(ch, scope).finally(() => inflight.delete(key));
      inflight.set(key, p);
    }
    return p;
  }

  return {
    async headerFor(scope) {
      if (lastChallenge?.scheme === 'bearer') return bearer(lastChallenge, scope);
      if (lastChallenge?.scheme === 'basic') return basicHeader();
      return undefined;
    },
    async answer(ch, scope) {
      if (ch.scheme === 'bearer') {
        lastChallenge = ch;
        tokens.delete(keyOf(ch, scope)); // a 401 with a cached token means the token is no good any more
        return bearer(ch, scope);
      }
      const basic = ch.scheme === 'basic' ? await basicHeader() : undefined;
      if (basic) {
        lastChallenge = ch;
        return basic;
      }
      return undefined;
    },
  };
}
