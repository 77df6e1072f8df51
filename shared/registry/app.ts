/**
 * The registry application: routes a {@link RegistryRequest} to the cache services and writes the response.
 * Read-only: every push or delete answers 405 `UNSUPPORTED`. Runtime-independent: the Lambda handler and the
 * local server both reach it through the same API Gateway v2 event.
 */
import { errorResponse } from '../http/error-response.js';
import { parseRoute } from '../http/router.js';
import { API_VERSION_HEADER, type RegistryRequest, type RegistryResponse } from '../http/types.js';
import { OCI_INDEX } from '../oci/media-types.js';
import { RegistryError } from '../oci/errors.js';
import { createBlobService, HOP_PARAM, type BlobService } from './blobs.js';
import type { RegistryDeps } from './deps.js';
import { createManifestService, type ManifestService } from './manifests.js';
import { getReferrers } from './referrers.js';
import { listCatalog, listTags, parsePageSize, type Page } from './tags.js';

/** Handles one request; never throws (errors become OCI error responses). */
export type RegistryApp = (req: RegistryRequest) => Promise<RegistryResponse>;

const READ_METHODS = new Set(['GET', 'HEAD']);

/** Builds the app from its dependencies. */
export function createRegistryApp(deps: RegistryDeps): RegistryApp {
  return createRegistry(deps).app;
}

/** Builds the app and the services behind it (the fill function calls `blobs.fill`). */
export function createRegistry(deps: RegistryDeps): { app: RegistryApp; blobs: BlobService; manifests: ManifestService } {
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

  /** The request's own path with its query, some parameters replaced (`ns` is kept for mirror clients). */
  function selfUrl(req: RegistryRequest, set: Record<string, string>): string {
    const q = new URLSearchParams(req.query);
    for (const [k, v] of Object.entries(set)) q.set(k, v);
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

  async function route(req: RegistryRequest): Promise<RegistryResponse> {
    const route = parseRoute(req.path);
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
        return json(200, { repositories: page.items }, req.method, linkHeader(req, page, n));
      }
      case 'tags': {
        const n = parsePageSize(req.query.get('n'));
        const page = await listTags(deps, cacheName(route.name, req), { n, last: req.query.get('last') ?? undefined });
        return json(200, { name: route.name, tags: page.items }, req.method, linkHeader(req, page, n));
      }
      case 'manifest': {
        const m = await manifests.get(cacheName(route.name, req), route.reference);
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
        const hop = Number(req.query.get(HOP_PARAM) ?? 0);
        const b = await blobs.locate(cacheName(route.name, req), route.digest, Number.isInteger(hop) && hop >= 0 ? hop : 0);
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

  const app: RegistryApp = async (req) => {
    try {
      return await route(req);
    } catch (err) {
      const res = errorResponse(err, req.method);
      if (res.unexpected) deps.log.error('unexpected error', { method: req.method, path: req.path, error: err as Error });
      const { unexpected: _unexpected, ...rest } = res;
      return rest;
    }
  };
  return { app, blobs, manifests };
}
