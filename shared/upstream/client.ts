/**
 * The upstream registry client for one pull-through cache rule: manifests (HEAD/GET with an Accept list
 * covering OCI and Docker schema2 types), blobs (streamed), tag lists and referrers. Every request goes through
 * exchange.ts (redirects, the auth dance at every hop, credentials only where the rule allows them) over the
 * rule's dispatcher (dispatcher.ts: address checks after DNS, outbound proxy). Every non-2xx answer becomes an
 * {@link UpstreamError}. Requests ask for `Accept-Encoding: identity` so sizes and digests are of the bytes as
 * stored.
 */
import type { Readable } from 'node:stream';
import type { PullThroughCacheRule } from '../config.js';
import type { Digest } from '../oci/digest.js';
import { MANIFEST_ACCEPT } from '../oci/media-types.js';
import { createHostPolicy } from './address-policy.js';
import type { TokenAuth } from './auth.js';
import type { UpstreamClient } from './client-types.js';
import { staticCredentials, type CredentialsProvider } from './credentials.js';
import { createUpstreamDispatcher, type ProxySettings, type Resolver } from './dispatcher.js';
import { UpstreamError, upstreamErrorFor } from './errors.js';
import { createExchange } from './exchange.js';
import type { UpstreamObserver } from './observed-send.js';
import { parseNextLink, readCapped } from './response-body.js';
import { discard, fetchSend, undiciSend, type UpstreamResponse } from './transport.js';

export type { FetchedBlob, FetchedManifest, ManifestHead, UpstreamClient } from './client-types.js';
export type { ProxySettings } from './dispatcher.js';
export { parseNextLink } from './response-body.js';

/** Milliseconds a blob body may stall before the transfer is abandoned. */
const BLOB_IDLE_MS = 60_000;
/** Most bytes of a tag list page read (distribution pages by 100 tags by default; Docker Hub sends thousands). */
const MAX_TAG_LIST_BYTES = 16 * 1024 * 1024;

/** Options of {@link createUpstreamClient}; all optional. */
export interface UpstreamClientOptions {
  /** Replaces the rule's static `username`/`accessToken` (credentials.ts builds it; `credentialsSecret` needs one). */
  credentials?: CredentialsProvider;
  /** Replaces the token auth built from the credentials. */
  auth?: TokenAuth;
  /** Outbound proxy (config-environment.ts reads `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`). */
  proxy?: ProxySettings;
  /** Tests: answers requests in-process instead of over the network (no dispatcher, so no address checks). */
  fetchImpl?: typeof fetch;
  /** Tests: the DNS resolver of the dispatcher's address checks. */
  resolve?: Resolver;
  /** Where every upstream request is counted and logged (observed-send.ts); default: nowhere. */
  observer?: Omit<UpstreamObserver, 'rule'>;
}

const ok = (res: UpstreamResponse) => res.status >= 200 && res.status < 300;
const sizeOf = (res: UpstreamResponse) => {
  const length = res.header('content-length');
  return length === null ? undefined : Number(length);
};

/** Builds the client for a rule. */
export function createUpstreamClient(rule: PullThroughCacheRule, opts: UpstreamClientOptions = {}): UpstreamClient {
  const base = new URL(rule.upstream);
  const timeoutMs = rule.upstreamTimeoutSeconds * 1000;
  if (rule.credentialsSecret !== undefined && !opts.credentials && !opts.auth) {
    throw new Error(`rule ${rule.prefix}: credentialsSecret needs a credentials provider`);
  }
  const policy = createHostPolicy(rule);
  const send = opts.fetchImpl ? fetchSend(opts.fetchImpl) : undiciSend(createUpstreamDispatcher({ policy, proxy: opts.proxy, resolve: opts.resolve }));
  const credentials = opts.credentials ?? staticCredentials(rule.username !== undefined ? { username: rule.username, password: rule.accessToken ?? '' } : undefined);
  const exchange = createExchange({ rule, policy, send, credentials, auth: opts.auth, observer: opts.observer });
  const urlOf = (path: string) => new URL(`${base.pathname.replace(/\/$/, '')}${path}`, base);
  /** A redirect to another registry's blob URL (a vanity host, a regional registry), not to a CDN. */
  const isBlobApi = (url: URL, digest: Digest) => /\/v2\/.+\/blobs\/[^/]+$/.test(url.pathname) && url.pathname.endsWith(`/blobs/${digest}`);

  async function fail(res: UpstreamResponse, what: string): Promise<never> {
    await discard(res);
    throw upstreamErrorFor(res.status, what, res.header('retry-after'));
  }

  /** GET a JSON document (tag list, referrers index), capped at `maxBytes`. */
  async function getJson(path: string, repository: string, accept: string, maxBytes: number, what: string) {
    const { res } = await exchange.request(urlOf(path), { method: 'GET', repository, headers: { Accept: accept }, signal: AbortSignal.timeout(timeoutMs) });
    if (!ok(res)) return fail(res, what);
    const body = await readCapped(res.body, maxBytes, what);
    try {
      return { json: JSON.parse(body.toString('utf8')) as unknown, res };
    } catch {
      throw new UpstreamError('unavailable', `${what}: upstream answered non-JSON`);
    }
  }

  return {
    async headManifest(repository, reference, o = {}) {
      const signal = AbortSignal.timeout(o.timeoutMs ?? timeoutMs);
      const { res } = await exchange.request(urlOf(`/v2/${repository}/manifests/${reference}`), { method: 'HEAD', repository, headers: { Accept: MANIFEST_ACCEPT }, signal });
      if (!ok(res)) return fail(res, 'manifest HEAD');
      await discard(res);
      return { digest: res.header('docker-content-digest') ?? undefined, mediaType: res.header('content-type') ?? undefined, size: sizeOf(res) };
    },

    async getManifest(repository, reference, maxBytes) {
      const signal = AbortSignal.timeout(timeoutMs);
      const { res } = await exchange.request(urlOf(`/v2/${repository}/manifests/${reference}`), { method: 'GET', repository, headers: { Accept: MANIFEST_ACCEPT }, signal });
      if (!ok(res)) return fail(res, 'manifest GET');
      if ((sizeOf(res) ?? 0) > maxBytes) {
        await discard(res);
        throw new UpstreamError('too-large', `manifest larger than ${maxBytes} bytes`);
      }
      const body = await readCapped(res.body, maxBytes, 'manifest', 'too-large');
      return { body, contentType: res.header('content-type') ?? undefined, digestHeader: res.header('docker-content-digest') ?? undefined };
    },

    async headBlob(repository, digest) {
      // Registry hops are followed; a redirect elsewhere (a CDN, CDN-backed registries) says the blob exists.
      const { res } = await exchange.request(urlOf(`/v2/${repository}/blobs/${digest}`), {
        method: 'HEAD',
        repository,
        signal: AbortSignal.timeout(timeoutMs),
        follow: (next) => isBlobApi(next, digest),
      });
      if (res.status >= 300 && res.status < 400) {
        await discard(res);
        return {};
      }
      if (!ok(res)) return fail(res, 'blob HEAD');
      await discard(res);
      return { size: sizeOf(res), digest: res.header('docker-content-digest') ?? undefined };
    },

    async getBlob(repository, digest) {
      // The timeout bounds the wait for response headers (all hops); then only stalls end a transfer.
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(new Error('upstream did not answer in time')), timeoutMs);
      let res: UpstreamResponse;
      try {
        ({ res } = await exchange.request(urlOf(`/v2/${repository}/blobs/${digest}`), { method: 'GET', repository, signal: controller.signal }));
      } finally {
        clearTimeout(timer);
      }
      if (!ok(res)) return fail(res, 'blob GET');
      const stream: Readable = res.body;
      // Abandon a transfer that stalls (a hung upstream must not hold a fill forever). One timer, pushed back by
      // each chunk (`refresh`: no new timer per 64 KiB chunk).
      const stalled = setTimeout(() => stream.destroy(new UpstreamError('unavailable', 'upstream blob transfer stalled')), BLOB_IDLE_MS);
      stream.on('data', () => stalled.refresh());
      stream.on('close', () => clearTimeout(stalled));
      return { stream, size: sizeOf(res) };
    },

    async blobRedirect(repository, digest) {
      const { res, url, location } = await exchange.request(urlOf(`/v2/${repository}/blobs/${digest}`), {
        method: 'GET',
        repository,
        signal: AbortSignal.timeout(timeoutMs),
        follow: (next) => isBlobApi(next, digest),
      });
      await discard(res);
      if (location) return exchange.redirectAllowed(url, location) && location.origin !== base.origin ? location.toString() : undefined;
      if (!ok(res)) throw upstreamErrorFor(res.status, 'blob GET', res.header('retry-after'));
      return undefined;
    },

    async getReferrers(repository, digest, maxBytes) {
      const { json } = await getJson(`/v2/${repository}/referrers/${digest}`, repository, 'application/vnd.oci.image.index.v1+json', maxBytes, 'referrers');
      const parsed = json as { manifests?: unknown } | null;
      if (!parsed || !Array.isArray(parsed.manifests)) throw new UpstreamError('unavailable', 'referrers: upstream answer is not an image index');
      return { manifests: parsed.manifests };
    },

    async listTags(repository, query) {
      const params = new URLSearchParams();
      if (query.n !== undefined) params.set('n', String(query.n));
      if (query.last !== undefined) params.set('last', query.last);
      const qs = params.size ? `?${params}` : '';
      const { json, res } = await getJson(`/v2/${repository}/tags/list${qs}`, repository, 'application/json', MAX_TAG_LIST_BYTES, 'tags list');
      const tags = (json as { tags?: unknown } | null)?.tags;
      return { tags: Array.isArray(tags) ? tags.filter((t): t is string => typeof t === 'string') : [], next: parseNextLink(res.header('link')) };
    },
  };
}
