/**
 * Upstream authentication (Docker token auth spec; distribution `registry/client/auth`): anonymous, Basic, and
 * Bearer tokens fetched from a challenge's realm, cached by realm+service+scope until their expiry. State is kept
 * per origin: each host that challenged (the rule's upstream, a registry it redirects to) gets its own scheme
 * and realm, so a later request to it skips the 401 round trip, and a host that never challenged (a blob CDN)
 * never gets an `Authorization` header.
 *
 * The rule's credentials are used only where the caller says so (exchange.ts: the rule's own upstream origin,
 * and hosts the rule lists in `credentialHosts`): sent as Basic to such a host, or to the token realm that such
 * a host's challenge names (which may be another host: Docker Hub's is auth.docker.io). Any other host's
 * challenge gets an anonymous token. A token endpoint's redirect to another origin drops them (exchange.ts).
 * Credentials are asked for only when an upstream challenges, so a lazy provider (a Secrets Manager secret) is
 * never read for an anonymous upstream.
 *
 * A token fetch that fails drops the origin's cached challenge, so the next request goes without a token and the
 * upstream challenges afresh (a realm that moved, or one a single 401 named and that never issues tokens, must
 * not break the rule until restart). The failure is remembered for {@link TOKEN_FAILURE_BACKOFF_MS} per realm,
 * service, scope and credentials: a challenge naming it again in that time gets the same error without a token
 * request, so a dead realm is not asked on every pull.
 */
import type { Challenge } from './challenge.js';
import { UpstreamError, upstreamErrorFor } from './errors.js';
import { readCapped } from './response-body.js';
import { discard, type UpstreamResponse } from './transport.js';

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

/** Milliseconds a failed token request is answered from memory (the same error) before the realm is asked again. */
export const TOKEN_FAILURE_BACKOFF_MS = 10_000;

/** Most bytes read from a token endpoint's answer (tokens are a few KiB). */
const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;

/**
 * GETs a token endpoint URL, following its redirects; `authorization` goes only to the URL's own origin.
 * Rejects with an `UpstreamError` when the endpoint cannot be reached.
 */
export type TokenFetch = (url: URL, authorization: string | undefined) => Promise<UpstreamResponse>;

/** Caches tokens and each origin's last challenge, so later requests skip the 401 round trip. */
export interface TokenAuth {
  /** `Authorization` for a request to `origin` needing `scope`, when that origin challenged before. */
  headerFor(origin: string, scope: string): Promise<string | undefined>;
  /**
   * Handles a 401 challenge from `origin`; returns the header to retry with, or undefined when it cannot help.
   * `credentials`: whether the rule's credentials may answer it (never for a host the rule did not allow).
   */
  answer(origin: string, challenge: Challenge, scope: string, credentials: boolean): Promise<string | undefined>;
}

/** Creates the auth state for one rule's upstream client. `now` in milliseconds (tests pass a clock). */
export function createTokenAuth(opts: { credentials?: Credentials | CredentialsProvider; fetchToken: TokenFetch; now?: () => number }): TokenAuth {
  const now = opts.now ?? Date.now;
  const tokens = new Map<string, { header: string; expiresAt: number }>();
  const inflight = new Map<string, Promise<string>>();
  const challenges = new Map<string, { challenge: Challenge; credentials: boolean }>();
  const failures = new Map<string, { error: unknown; until: number }>();
  const basicHeader = async (credentials: boolean) => {
    if (!credentials) return undefined;
    const c = typeof opts.credentials === 'function' ? await opts.credentials() : opts.credentials;
    return c && `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
  };

  const keyOf = (ch: Challenge, scope: string, credentials: boolean) => `${ch.params.realm}\n${ch.params.service ?? ''}\n${scope}\n${credentials}`;

  async function fetchToken(ch: Challenge, scope: string, credentials: boolean): Promise<string> {
    const realm = ch.params.realm;
    if (!realm || !/^https?:\/\//.test(realm)) throw new UpstreamError('unavailable', 'upstream challenge has no usable realm');
    const url = new URL(realm);
    if (ch.params.service) url.searchParams.set('service', ch.params.service);
    if (scope) url.searchParams.set('scope', scope);
    const res = await opts.fetchToken(url, await basicHeader(credentials));
    if (res.status < 200 || res.status >= 300) {
      await discard(res);
      throw upstreamErrorFor(res.status, 'token request', res.header('retry-after'));
    }
    let body: { token?: string; access_token?: string; expires_in?: number };
    try {
      body = JSON.parse((await readCapped(res.body, MAX_TOKEN_RESPONSE_BYTES, 'token response')).toString('utf8')) as typeof body;
    } catch (err) {
      if (err instanceof UpstreamError) throw err;
      throw new UpstreamError('unavailable', 'token endpoint answered non-JSON');
    }
    const token = body?.token ?? body?.access_token;
    if (!token || typeof token !== 'string') throw new UpstreamError('unavailable', 'token endpoint answered no token');
    const seconds = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    const header = `Bearer ${token}`;
    tokens.set(keyOf(ch, scope, credentials), { header, expiresAt: now() + (seconds - EXPIRY_MARGIN_SECONDS) * 1000 });
    return header;
  }

  /** A token for `known.challenge` from `origin`; a failure forgets the challenge (if still current) and is remembered. */
  async function bearer(origin: string, known: { challenge: Challenge; credentials: boolean }, scope: string): Promise<string> {
    const key = keyOf(known.challenge, scope, known.credentials);
    const cached = tokens.get(key);
    if (cached && cached.expiresAt > now()) return cached.header;
    const failed = failures.get(key);
    if (failed && failed.until > now()) {
      forget(origin, known);
      throw failed.error;
    }
    let p = inflight.get(key);
    if (!p) {
      p = fetchToken(known.challenge, scope, known.credentials).then(
        (header) => (failures.delete(key), header),
        (error: unknown) => {
          for (const [k, f] of failures) if (f.until <= now()) failures.delete(k); // keeps the map to live entries
          failures.set(key, { error, until: now() + TOKEN_FAILURE_BACKOFF_MS });
          throw error;
        },
      );
      p = p.finally(() => inflight.delete(key));
      inflight.set(key, p);
    }
    return p.catch((error: unknown) => {
      forget(origin, known);
      throw error;
    });
  }

  /** Drops `origin`'s cached challenge when it is still `known` (a newer challenge stays). */
  function forget(origin: string, known: { challenge: Challenge; credentials: boolean }): void {
    if (challenges.get(origin) === known) challenges.delete(origin);
  }

  return {
    async headerFor(origin, scope) {
      const known = challenges.get(origin);
      if (known?.challenge.scheme === 'bearer') return bearer(origin, known, scope);
      if (known?.challenge.scheme === 'basic') return basicHeader(known.credentials);
      return undefined;
    },
    async answer(origin, ch, scope, credentials) {
      if (ch.scheme === 'bearer') {
        const known = { challenge: ch, credentials };
        challenges.set(origin, known);
        tokens.delete(keyOf(ch, scope, credentials)); // a 401 with a cached token means the token is no good any more
        return bearer(origin, known, scope);
      }
      const basic = ch.scheme === 'basic' ? await basicHeader(credentials) : undefined;
      if (basic) {
        challenges.set(origin, { challenge: ch, credentials });
        return basic;
      }
      return undefined;
    },
  };
}
