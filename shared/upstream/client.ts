/**
 * The upstream registry client for one pull-through cache rule: manifests (HEAD/GET with an Accept list
 * covering OCI and Docker schema2 types), blobs (streamed, redirects followed without forwarding
 * `Authorization` to another origin), and tag lists. Every non-2xx answer becomes an {@link UpstreamError}.
 * Requests ask for `Accept-Encoding: identity` so sizes and digests are of the bytes as stored.
 */
import type { Readable } from 'node:stream';
import { request as undiciRequest, type Dispatcher } from 'undici';
import type { PullThroughCacheRule } from '../config.js';
import { MANIFEST_ACCEPT } from '../oci/media-types.js';
import { createTokenAuth, type CredentialsProvider, type TokenAuth } from './auth.js';
import { parseChallenge } from './challenge.js';
import type { UpstreamClient } from './client-types.js';
import { UpstreamError, upstreamErrorFor } from './errors.js';
import { headerOf, parseNextLink, readCapped } from './response-body.js';

export type { FetchedBlob, FetchedManifest, ManifestHead, UpstreamClient } from './client-types.js';
export { parseNextLink } from './response-body.js';

/** Maximum redirects followed for one blob (Go's http client allows 10). */
const MAX_REDIRECTS = 10;
/** Milliseconds a blob body may stall before the transfer is abandoned. */
const BLOB_IDLE_MS = 60_000;

/**
 * Builds the client for a rule. `fetchImpl` is injectable for tests (defaults to global fetch). `credentials`
 * replaces the rule's static `username`/`accessToken` (shared/upstream/credentials.ts builds it; a rule with
 * `credentialsSecret` needs one).
 */
export function createUpstreamClient(
  rule: PullThroughCacheRule,
  opts: { fetchImpl?: typeof fetch; auth?: TokenAuth; credentials?: CredentialsProvider } = {},
): UpstreamClient {
  const doFetch = opts.fetchImpl ?? fetch;
  const base = new URL(rule.upstream);
  const timeoutMs = rule.upstreamTimeoutSeconds * 1000;
  if (rule.credentialsSecret !== undefined && !opts.credentials && !opts.auth) {
    throw new Error(`rule ${rule.prefix}: credentialsSecret needs a credentials provider`);
  }
  const auth =
    opts.auth ??
    createTokenAuth({
      credentials: opts.credentials ?? (rule.username !== undefined ? { username: rule.username, password: rule.accessToken ?? '' } : undefined),
      timeoutMs,
      fetchImpl: doFetch,
    });
  const pullScope = (repository: string) => `repository:${repository}:pull`;
  const urlOf = (path: string) => new URL(`${base.pathname.replace(/\/$/, '')}${path}`, base);

  /** One request to the upstream origin, with the auth dance. The caller consumes or cancels the body. */
  async function send(
    method: string,
    url: URL,
    scope: string,
    headers: Record<string, string>,
    signal: AbortSignal,
  ): Promise<Response> {
    const attempt = async (authorization?: string) => {
      try {
        return await doFetch(url, {
          method,
          headers: { 'Accept-Encoding': 'identity', ...headers, ...(authorization ? { Authorization: authorization } : {}) },
          redirect: 'manual',
          signal,
        });
      } catch (err) {
        throw new UpstreamError('unavailable', `${method} ${url.pathname}: ${(err as Error).message}`);
      }
    };
    let res = await attempt(await auth.headerFor(scope));
    if (res.status === 401) {
      const challenge = parseChallenge(res.headers.get('www-authenticate'));
      await res.body?.cancel();
      const retry = challenge && (await auth.answer(challenge, scope));
      if (retry) res = await attempt(retry);
    }
    return res;
  }

  async function fail(res: Response, what: string): Promise<never> {
    await res.body?.cancel().catch(() => undefined);
    throw upstreamErrorFor(res.status, what, res.headers.get('retry-after'));
  }

  /**
   * One GET for blob bytes with undici's `request` (a Node stream body, kept-alive connections: about half the
   * CPU of fetch + Readable.fromWeb on large blobs). `authorization` is sent only when given.
   */
  async function rawGet(url: URL, authorization: string | undefined, signal: AbortSignal): Promise<Dispatcher.ResponseData> {
    try {
      return await undiciRequest(url, {
        method: 'GET',
        headers: { 'accept-encoding': 'identity', ...(authorization ? { authorization } : {}) },
        signal,
      });
    } catch (err) {
      throw new UpstreamError('unavailable', `GET ${url.pathname}: ${(err as Error).message}`);
    }
  }

  return {
    async headManifest(repository, reference, opts = {}) {
      const url = urlOf(`/v2/${repository}/manifests/${reference}`);
      const res = await send('HEAD', url, pullScope(repository), { Accept: MANIFEST_ACCEPT }, AbortSignal.timeout(opts.timeoutMs ?? timeoutMs));
      if (!res.ok) return fail(res, 'manifest HEAD');
      await res.body?.cancel().catch(() => undefined);
      const length = res.headers.get('content-length');
      return {
        digest: res.headers.get('docker-content-digest') ?? undefined,
        mediaType: res.headers.get('content-type') ?? undefined,
        size: length === null ? undefined : Number(length),
      };
    },

    async getManifest(repository, reference, maxBytes) {
      const url = urlOf(`/v2/${repository}/manifests/${reference}`);
      const res = await send('GET', url, pullScope(repository), { Accept: MANIFEST_ACCEPT }, AbortSignal.timeout(timeoutMs));
      if (!res.ok) return fail(res, 'manifest GET');
      const declared = Number(res.headers.get('content-length') ?? 0);
      if (declared > maxBytes) {
        await res.body?.cancel().catch(() => undefined);
        throw new UpstreamError('unavailable', `manifest larger than ${maxBytes} bytes`);
      }
      const body = await readCapped(res, maxBytes);
      return {
        body,
        contentType: res.headers.get('content-type') ?? undefined,
        digestHeader: res.headers.get('docker-content-digest') ?? undefined,
      };
    },

    async headBlob(repository, digest) {
      const url = urlOf(`/v2/${repository}/blobs/${digest}`);
      const signal = AbortSignal.timeout(timeoutMs);
      let res = await send('HEAD', url, pullScope(repository), {}, signal);
      if (res.status >= 300 && res.status < 400) {
        // A HEAD that redirects (CDN-backed registries): the blob exists; size comes from the target if it says.
        await res.body?.cancel().catch(() => undefined);
        return {};
      }
      if (!res.ok) return fail(res, 'blob HEAD');
      await res.body?.cancel().catch(() => undefined);
      const length = res.headers.get('content-length');
      return { size: length === null ? undefined : Number(length) };
    },

    async getBlob(repository, digest) {
      const scope = pullScope(repository);
      let url = urlOf(`/v2/${repository}/blobs/${digest}`);
      const controller = new AbortController();
      let timer = setTimeout(() => controller.abort(new Error('upstream did not answer in time')), timeoutMs);
      let res: Dispatcher.ResponseData;
      try {
        let authorization = await auth.headerFor(scope);
        res = await rawGet(url, authorization, controller.signal);
        if (res.statusCode === 401) {
          const challenge = parseChallenge(headerOf(res, 'www-authenticate'));
          await res.body.dump();
          const retry = challenge && (await auth.answer(challenge, scope));
          if (retry) {
            authorization = retry;
            res = await rawGet(url, authorization, controller.signal);
          }
        }
        // Redirects (CDN-backed registries): only https targets, the upstream origin, or allowed hosts; never
        // Authorization to another origin (presigned CDN URLs carry their own).
        for (let hop = 0; res.statusCode >= 300 && res.statusCode < 400; hop++) {
          const location = headerOf(res, 'location');
          await res.body.dump();
          if (!location || hop >= MAX_REDIRECTS) throw new UpstreamError('unavailable', 'blob GET: bad or endless redirect');
          url = new URL(location, url);
          const sameOrigin = url.origin === base.origin;
          if (!(url.protocol === 'https:' || sameOrigin || rule.insecureRedirectHosts.includes(url.host))) {
            throw new UpstreamError('unavailable', `blob GET: refusing redirect to ${url.protocol}//${url.host}`);
          }
          res = await rawGet(url, sameOrigin ? authorization : undefined, controller.signal);
        }
      } finally {
        clearTimeout(timer);
      }
      if (res.statusCode < 200 || res.statusCode >= 300) {
        await res.body.dump().catch(() => undefined);
        throw upstreamErrorFor(res.statusCode, 'blob GET', headerOf(res, 'retry-after'));
      }
      const length = headerOf(res, 'content-length');
      const stream: Readable = res.body;
      // Abandon a transfer that stalls (a hung upstream must not hold a fill forever).
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => stream.destroy(new UpstreamError('unavailable', 'upstream blob transfer stalled')), BLOB_IDLE_MS);
      };
      arm();
      stream.on('data', arm);
      stream.on('close', () => clearTimeout(timer));
      return { stream, size: length === null ? undefined : Number(length) };
    },

    async blobRedirect(repository, digest) {
      const url = urlOf(`/v2/${repository}/blobs/${digest}`);
      const res = await send('GET', url, pullScope(repository), {}, AbortSignal.timeout(timeoutMs));
      await res.body?.cancel().catch(() => undefined);
      if (res.status >= 300 && res.status < 400) {
        const location = res.headers.get('location');
        const target = location ? new URL(location, url) : undefined;
        const allowed = target && (target.protocol === 'https:' || rule.insecureRedirectHosts.includes(target.host));
        return allowed && target.origin !== base.origin ? target.toString() : undefined;
      }
      if (!res.ok) throw upstreamErrorFor(res.status, 'blob GET', res.headers.get('retry-after'));
      return undefined;
    },

    async getReferrers(repository, digest, maxBytes) {
      const url = urlOf(`/v2/${repository}/referrers/${digest}`);
      const res = await send('GET', url, pullScope(repository), { Accept: 'application/vnd.oci.image.index.v1+json' }, AbortSignal.timeout(timeoutMs));
      if (!res.ok) return fail(res, 'referrers');
      const body = await readCapped(res, maxBytes);
      let parsed: { manifests?: unknown };
      try {
        parsed = JSON.parse(body.toString('utf8')) as { manifests?: unknown };
      } catch {
        throw new UpstreamError('unavailable', 'referrers: upstream answered non-JSON');
      }
      if (!parsed || !Array.isArray(parsed.manifests)) throw new UpstreamError('unavailable', 'referrers: upstream answer is not an image index');
      return { manifests: parsed.manifests };
    },

    async listTags(repository, query) {
      const url = urlOf(`/v2/${repository}/tags/list`);
      if (query.n !== undefined) url.searchParams.set('n', String(query.n));
      if (query.last !== undefined) url.searchParams.set('last', query.last);
      const res = await send('GET', url, pullScope(repository), { Accept: 'application/json' }, AbortSignal.timeout(timeoutMs));
      if (!res.ok) return fail(res, 'tags list');
      let body: { tags?: unknown };
      try {
        body = (await res.json()) as { tags?: unknown };
      } catch {
        throw new UpstreamError('unavailable', 'tags list: upstream answered non-JSON');
      }
      const tags = Array.isArray(body.tags) ? body.tags.filter((t): t is string => typeof t === 'string') : [];
      return { tags, next: parseNextLink(res.headers.get('link')) };
    },
  };
}
