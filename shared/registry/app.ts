/**
 * The registry application: routes a {@link RegistryRequest} to the cache services and writes the response.
 * Read-only: every push or delete answers 405 `UNSUPPORTED`. Runtime-independent: the Lambda handler and the
 * local server both reach it through the same API Gateway v2 event. With client auth on (`auth.mode` token or
 * iam), `/token` issues bearer tokens and every `/v2/…` request passes the guard first (shared/auth/).
 */
import type { ClientAuth, GuardedResource } from '../auth/client-auth.js';
import { errorResponse } from '../http/error-response.js';
import { parseRoute, type Route } from '../http/router.js';
import { API_VERSION_HEADER, type RegistryRequest, type RegistryResponse } from '../http/types.js';
import { OCI_INDEX } from '../oci/media-types.js';
import { RegistryError } from '../oci/errors.js';
import { isStorageFull, storageFullError } from '../store/storage-full.js';
import { NO_RULE, noMetrics, type RequestKind } from '../observe/metrics.js';
import { currentScope, inScope, newScope, noteCache, noteRule, type RequestScope } from '../observe/request-scope.js';
import { createBlobService, HOP_PARAM, type BlobService } from './blobs.js';
import type { RegistryDeps } from './deps.js';
import { createManifestService, type ManifestService } from './manifests.js';
import { getReferrers } from './referrers.js';
import { listCatalog, listTags, parsePageSize, type Page } from './tags.js';

/**
 * Handles one request; never throws (errors become OCI error responses). What the cache did is recorded in the
 * current request scope (shared/observe/request-scope.ts): a caller that wants it for its log line runs the app
 * inside a scope of its own (`inScope`); otherwise the app makes one. Each request of a {@link RequestKind} route
 * is counted in `deps.metrics` (`pullthrough_requests_total`, `pullthrough_served_bytes_total`).
 */
export type RegistryApp = (req: RegistryRequest) => Promise<RegistryResponse>;

const READ_METHODS = new Set(['GET', 'HEAD']);
const COUNTED: ReadonlySet<string> = new Set<RequestKind>(['manifest', 'blob', 'tags', 'referrers', 'catalog']);

/** Builds the app from its dependencies. */
export function createRegistryApp(deps: RegistryDeps): RegistryApp {
  return createRegistry(deps).app;
}

/** Options of {@link createRegistry}. */
export interface RegistryOptions {
  /** Client auth (the guard and `/token`); absent = mode `none`, anyone may pull. */
  auth?: ClientAuth;
  /**
   * `false`: no request scope and no request metrics (the cache behaves the same; nothing is recorded of it):
   * `PULLTHROUGH_ACCOUNTING=off`, the baseline bench/metrics-overhead.ts measures the accounting against. Default true.
   */
  accounting?: boolean;
}

/** Builds the app and the services behind it (the fill function calls `blobs.fill`). */
export function createRegistry(
  deps: RegistryDeps,
  options: RegistryOptions = {},
): { app: RegistryApp; blobs: BlobService; manifests: ManifestService } {
  const { auth } = options;
  const metrics = deps.metrics ?? noMetrics;
  // Every name resolved for a request names its rule in the request's scope (the log's `rule` field).
  const resolve = deps.resolve;
  deps = {
    ...deps,
    resolve(name) {
      const resolved = resolve(name);
      noteRule(resolved.rule.prefix);
      return resolved;
    },
  };
  const manifests = createManifestService(deps);
  const blobs = createBlobService(deps);

  function json(status: number, value: unknown, method: string, extra: Record<string, string> = {}): RegistryResponse {
    const body = JSON.stringify(value);
    return {
      status,
      headers: { ...API_VERSION_HEADER, 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)), ...extra },
      body: method === 'HEAD' ? undefined : body,
    };
  }

  /**
   * The request's own path with the query parameters the cache understands (`n`, `last`, `ns`, `pt-hop`),
   * some replaced; anything else the client sent is dropped (so a URL we hand out stays small).
   */
  function selfUrl(req: RegistryRequest, set: Record<string, string>): string {
    const q = new URLSearchParams();
    for (const k of ['n', 'last', 'ns', HOP_PARAM]) {
      const v = set[k] ?? req.query.get(k);
      if (v !== null && v !== undefined) q.set(k, v);
    }
    return `${req.path}?${q}`;
  }

  function linkHeader(req: RegistryRequest, page: Page, n: number | undefined): Record<string, string> {
    if (page.next === undefined) return {};
    const set: Record<string, string> = { last: page.next };
    if (n !== undefined) set.n = String(n);
    return { Link: `<${selfUrl(req, set)}>; rel="next"` };
  }

  /**
   * The prefixed name the services work with. Mirror clients send the upstream repository without a prefix:
   * containerd adds `?ns=<registry host>` (which selects the rule whose upstream is that host), Docker's
   * `registry-mirrors` sends bare Docker Hub names (served by the configured default rule). `ns` is never
   * forwarded upstream nor made part of a key.
   */
  function cacheName(name: string, req: RegistryRequest): string {
    const ns = req.query.get('ns');
    return ns === null ? deps.mirrorName(name) : deps.mirrorName(name, ns);
  }

  /** What the guard checks for a route: `pull` on the name (read routes), the catalog scope, or any token. */
  function guarded(route: Route, req: RegistryRequest): GuardedResource {
    if (!READ_METHODS.has(req.method)) return { kind: 'any' };
    switch (route.kind) {
      case 'catalog':
        return { kind: 'catalog' };
      case 'manifest':
      case 'blob':
      case 'tags':
      case 'referrers':
        return { kind: 'repository', name: route.name, canonical: () => deps.resolve(cacheName(route.name, req)).name };
      default:
        return { kind: 'any' };
    }
  }

  async function answer(req: RegistryRequest, route: Route, scope: RequestScope): Promise<RegistryResponse> {
    if (route.kind === 'token') {
      if (!auth) throw new RegistryError('NAME_UNKNOWN', 'client authentication is off: no token endpoint', { status: 404 });
      return auth.token(req);
    }
    if (auth) await auth.guard(req, guarded(route, req));
    if (route.kind === 'unknown') throw new RegistryError('NAME_UNKNOWN', 'unknown registry route', { status: 404 });
    if (route.kind === 'upload' || !READ_METHODS.has(req.method)) {
      throw new RegistryError('UNSUPPORTED', 'this registry is a read-only pull-through cache', { headers: { Allow: 'GET, HEAD' } });
    }
    switch (route.kind) {
      case 'base':
        return json(200, {}, req.method);
      case 'catalog': {
        const n = parsePageSize(req.query.get('n'));
        const page = await listCatalog(deps, { n, last: req.query.get('last') ?? undefined });
        noteCache('hit');
        scope.rule = undefined; // the catalog spans every rule (listing resolved each name)
        return json(200, { repositories: page.items }, req.method, linkHeader(req, page, n));
      }
      case 'tags': {
        const n = parsePageSize(req.query.get('n'));
        const page = await listTags(deps, cacheName(route.name, req), { n, last: req.query.get('last') ?? undefined });
        return json(200, { name: route.name, tags: page.items }, req.method, linkHeader(req, page, n));
      }
      case 'manifest': {
        const m = await manifests.get(cacheName(route.name, req), route.reference);
        if (req.method !== 'HEAD') {
          scope.servedBytes = m.size;
          blobs.noteManifest(m); // a pull: its blobs come next
        }
        return {
          status: 200,
          headers: {
            ...API_VERSION_HEADER,
            'Content-Type': m.mediaType,
            'Content-Length': String(m.size),
            'Docker-Content-Digest': m.digest,
            ETag: `"${m.digest}"`,
          },
          body: req.method === 'HEAD' ? undefined : m.body,
        };
      }
      case 'blob': {
        if (req.method === 'HEAD') {
          const b = await blobs.stat(cacheName(route.name, req), route.digest);
          return {
            status: 200,
            headers: { ...API_VERSION_HEADER, 'Content-Type': 'application/octet-stream', 'Content-Length': String(b.size), 'Docker-Content-Digest': b.digest },
          };
        }
        const hopParam = req.query.get(HOP_PARAM) ?? '';
        const hop = /^\d{1,2}$/.test(hopParam) ? Number(hopParam) : 0;
        const b = await blobs.locate(cacheName(route.name, req), route.digest, hop);
        // The bytes a client fetches from the stored blob (a redirect back to itself or the upstream serves none).
        if (b.kind === 'blob') scope.servedBytes = b.size ?? 0;
        return {
          status: 307,
          headers: {
            ...API_VERSION_HEADER,
            Location: b.kind === 'blob' ? b.location.url : b.kind === 'retry' ? selfUrl(req, { [HOP_PARAM]: String(b.hop) }) : b.location,
            'Docker-Content-Digest': b.digest,
            'Content-Length': '0',
            ...(b.kind === 'retry' ? { 'Retry-After': '1' } : {}),
          },
        };
      }
      case 'referrers': {
        const artifactType = req.query.get('artifactType') ?? undefined;
        const r = await getReferrers(deps, cacheName(route.name, req), route.digest, artifactType);
        return {
          status: 200,
          headers: {
            ...API_VERSION_HEADER,
            'Content-Type': OCI_INDEX,
            'Content-Length': String(Buffer.byteLength(r.body)),
            ...(r.filtered ? { 'OCI-Filters-Applied': 'artifactType' } : {}),
          },
          body: req.method === 'HEAD' ? undefined : r.body,
        };
      }
    }
  }

  async function respond(req: RegistryRequest, scope: RequestScope): Promise<RegistryResponse> {
    const route = parseRoute(req.path);
    const res = await answerOrError(req, route, scope);
    if (COUNTED.has(route.kind)) {
      const result = res.status >= 400 ? 'error' : (scope.cache ?? 'none');
      metrics.request({ rule: scope.rule ?? NO_RULE, kind: route.kind as RequestKind, result, servedBytes: res.status >= 400 ? 0 : scope.servedBytes });
    }
    return res;
  }

  async function answerOrError(req: RegistryRequest, route: Route, scope: RequestScope): Promise<RegistryResponse> {
    try {
      return await answer(req, route, scope);
    } catch (thrown) {
      // Storage exhaustion anywhere (a manifest or lease write on a full disk): a retryable 503, never 500.
      const err = !(thrown instanceof RegistryError) && isStorageFull(thrown) ? storageFullError(30, thrown) : thrown;
      if (err !== thrown) deps.log.error('out of storage', { event: 'storage-full', method: req.method, path: req.path, reason: (thrown as Error).message });
      const res = errorResponse(err, req.method);
      if (res.unexpected) deps.log.error('unexpected error', { method: req.method, path: req.path, error: err as Error });
      else if (res.status >= 500 || res.status === 429) {
        // The client sees only the code; the operator sees why (the upstream failure behind it, never a body).
        const cause = (err as { cause?: unknown }).cause;
        deps.log.warn('upstream trouble', { method: req.method, path: req.path, status: res.status, reason: cause instanceof Error ? cause.message : (err as Error).message });
      }
      const { unexpected: _unexpected, ...rest } = res;
      return rest;
    }
  }

  const app: RegistryApp = (req) => {
    if (options.accounting === false) return answerOrError(req, parseRoute(req.path), newScope());
    const scope = currentScope();
    if (scope) return respond(req, scope);
    const own = newScope();
    return inScope(own, () => respond(req, own));
  };
  return { app, blobs, manifests };
}
