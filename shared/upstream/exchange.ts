/**
 * Upstream requests of one rule with redirects and the auth dance: {@link createExchange}. Every upstream
 * request of the client — manifests, blobs, tag lists, referrers, token realms — goes through its `send`
 * wrapper ({@link Exchange.send}), the one place to observe them all: observed-send.ts counts each in the metrics
 * and the current request's scope and logs it at DEBUG (method, host, path, status, ms, bytes; the cause of a
 * failure).
 *
 * Redirects (registry.k8s.io answers every manifest request with a redirect to a regional registry, blobs go to
 * S3 or a CDN, vanity hosts redirect the whole `/v2/` API) are followed up to {@link MAX_REDIRECTS} hops:
 * - to `https:`, to the rule's own upstream origin, or to an `http:` host listed in `insecureRedirectHosts`;
 * - only to addresses address-policy.ts allows (the dispatcher checks the address connected to);
 * - at every hop, a 401 challenge is answered for the host that sent it, with the scope of the repository path
 *   of that host's URL (a redirect may move `pause` to `k8s-artifacts-prod/images/pause`);
 * - the rule's credentials go only to its own upstream origin and hosts in `credentialHosts` (and the token
 *   realms those name); other hosts get anonymous tokens, and a host that never challenged (a presigned CDN URL)
 *   never gets an `Authorization` header.
 * A token realm gets the same address rules as any other host, whoever names it: an upstream can name any URL
 * as its realm, so trusting the realm it names would let a hostile upstream send the cache's requests into its
 * own network. A realm on an internal address must be the upstream's own host or listed in `internalHosts`.
 * Sending a realm the rule's credentials (auth.ts) is no address trust: it never makes the realm a redirect target.
 */
import type { PullThroughCacheRule } from '../config.js';
import { assertLiteralAllowed, type HostPolicy } from './address-policy.js';
import { createTokenAuth, type CredentialsProvider, type TokenAuth } from './auth.js';
import { parseChallenge } from './challenge.js';
import { UpstreamError } from './errors.js';
import { observedSend, upstreamKindOf, type UpstreamObserver } from './observed-send.js';
import { discard, type UpstreamRequest, type UpstreamResponse, type UpstreamSend } from './transport.js';
import type { UpstreamKind } from '../observe/metrics.js';
import { noMetrics } from '../observe/metrics.js';

/** Most redirects followed for one request (Go's http client allows 10). */
export const MAX_REDIRECTS = 10;

/** The repository path in a registry API URL (`/v2/<name>/manifests/<ref>`, blobs, referrers, tags/list). */
const API_PATH = /\/v2\/(.+)\/(?:manifests\/[^/]+|blobs\/[^/]+|referrers\/[^/]+|tags\/list)$/;

/** The pull scope for a request to `url`: from its own repository path, else `repository`'s. */
export function pullScopeFor(url: URL, repository: string): string {
  const m = API_PATH.exec(url.pathname);
  return `repository:${m ? decodeURIComponent(m[1]) : repository}:pull`;
}

/** What {@link Exchange.request} got: the final response, its URL, and a redirect the caller chose not to follow. */
export interface Exchanged {
  res: UpstreamResponse;
  url: URL;
  /** Set when the response is a redirect not followed (`follow` said no). */
  location?: URL;
}

/** Requests of one rule's client. */
export interface Exchange {
  /** The one path of every upstream request (no redirects, no auth). */
  send(req: UpstreamRequest): Promise<UpstreamResponse>;
  /**
   * Whether a redirect from `from` to `to` may be followed or handed to a client: the scheme rule and the checks
   * that need no DNS (a client given the URL resolves the name itself).
   */
  redirectAllowed(from: URL, to: URL): boolean;
  /**
   * `method url` with the auth dance at every hop and redirects followed while `follow(next)` says so (default:
   * always). `repository` is the upstream repository (the scope when a URL has no repository path).
   * @throws UpstreamError `unavailable` on a network failure, a refused redirect or address, or too many hops
   */
  request(
    url: URL,
    opts: { method: 'GET' | 'HEAD'; repository: string; signal: AbortSignal; headers?: Record<string, string>; follow?: (next: URL) => boolean },
  ): Promise<Exchanged>;
}

/**
 * Builds the exchange of `rule` over `send`; `auth` replaces the token auth built from `credentials`; `observer`
 * receives every request's metrics and log line (default: metrics nowhere, no log).
 */
export function createExchange(deps: {
  rule: PullThroughCacheRule;
  policy: HostPolicy;
  send: UpstreamSend;
  credentials?: CredentialsProvider;
  auth?: TokenAuth;
  observer?: Omit<UpstreamObserver, 'rule'>;
}): Exchange {
  const { rule, policy } = deps;
  const base = new URL(rule.upstream);
  const timeoutMs = rule.upstreamTimeoutSeconds * 1000;
  const credentialHosts = new Set(rule.credentialHosts.map((h) => h.toLowerCase()));
  const credentialed = (url: URL) => url.origin === base.origin || credentialHosts.has(url.host.toLowerCase());

  const observed = observedSend(deps.send, { rule: rule.prefix, metrics: deps.observer?.metrics ?? noMetrics, log: deps.observer?.log });

  /** Sends one request (an internal literal address is refused before anything is sent, and not counted). */
  async function send(req: UpstreamRequest, kind?: UpstreamKind): Promise<UpstreamResponse> {
    assertLiteralAllowed(req.url, policy);
    return observed(req, kind);
  }

  /** GETs a token realm, following its redirects; `authorization` only while on the realm's own origin. */
  async function fetchToken(realm: URL, authorization: string | undefined): Promise<UpstreamResponse> {
    const signal = AbortSignal.timeout(timeoutMs);
    let url = realm;
    for (let hop = 0; ; hop++) {
      const res = await send({ method: 'GET', url, signal, headers: { Accept: 'application/json', ...(authorization && url.origin === realm.origin ? { Authorization: authorization } : {}) } }, 'token');
      const location = res.status >= 300 && res.status < 400 ? res.header('location') : null;
      if (!location || hop >= MAX_REDIRECTS) return res;
      await discard(res);
      url = new URL(location, url);
    }
  }

  const auth = deps.auth ?? createTokenAuth({ credentials: deps.credentials, fetchToken });

  /** One hop: the request, and on a 401 challenge the answer for that host and one retry. */
  async function hop(method: 'GET' | 'HEAD', url: URL, scope: string, headers: Record<string, string>, signal: AbortSignal, kind: UpstreamKind): Promise<UpstreamResponse> {
    const withAuth = (authorization: string | undefined) => ({ 'Accept-Encoding': 'identity', ...headers, ...(authorization ? { Authorization: authorization } : {}) });
    const res = await send({ method, url, headers: withAuth(await auth.headerFor(url.origin, scope)), signal }, kind);
    if (res.status !== 401) return res;
    const challenge = parseChallenge(res.header('www-authenticate'));
    if (!challenge) return res;
    await discard(res);
    const retry = await auth.answer(url.origin, challenge, scope, credentialed(url));
    return retry ? send({ method, url, headers: withAuth(retry), signal }, kind) : res;
  }

  /** Refuses a redirect target the rule does not allow (plain http to a host not listed, an internal literal). */
  function checkRedirect(from: URL, to: URL): void {
    const schemeAllowed = to.protocol === 'https:' || to.origin === base.origin || (to.protocol === 'http:' && rule.insecureRedirectHosts.includes(to.host));
    if (!schemeAllowed) {
      throw new UpstreamError('unavailable', `${from.pathname}: refusing redirect to ${to.protocol}//${to.host} (https only, or a host in insecureRedirectHosts)`);
    }
    assertLiteralAllowed(to, policy);
  }

  return {
    send: (req) => send(req),
    redirectAllowed(from, to) {
      try {
        checkRedirect(from, to);
        return true;
      } catch {
        return false;
      }
    },
    async request(first, opts) {
      let url = first;
      // A hop to a CDN keeps the kind of the request it continues.
      const kind = upstreamKindOf(first) ?? 'other';
      for (let hops = 0; ; hops++) {
        const res = await hop(opts.method, url, pullScopeFor(url, opts.repository), opts.headers ?? {}, opts.signal, kind);
        const location = res.status >= 300 && res.status < 400 ? res.header('location') : null;
        if (!location) return { res, url };
        let next: URL;
        try {
          next = new URL(location, url);
        } catch {
          await discard(res);
          throw new UpstreamError('unavailable', `${opts.method} ${url.pathname}: redirect to an invalid URL`);
        }
        if (opts.follow && !opts.follow(next)) return { res, url, location: next };
        await discard(res);
        if (hops >= MAX_REDIRECTS) throw new UpstreamError('unavailable', `${opts.method} ${first.pathname}: more than ${MAX_REDIRECTS} redirects`);
        checkRedirect(url, next);
        url = next;
      }
    },
  };
}
