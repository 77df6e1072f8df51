/**
 * Parses `/v2/...` paths into routes. Names contain slashes, so the path is read from the right: the last
 * segment is the reference, the one before it the kind (`manifests`, `blobs`, `referrers`, or `tags/list`).
 * Push endpoints (`blobs/uploads/...`) are recognised so they can be refused with `UNSUPPORTED`. `/token` is
 * the token endpoint of client auth (Docker token authentication), outside `/v2/`.
 */

/** A recognised registry route. `name` is still unvalidated. */
export type Route =
  | { kind: 'base' }
  | { kind: 'catalog' }
  | { kind: 'manifest'; name: string; reference: string }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'tags'; name: string }
  | { kind: 'referrers'; name: string; digest: string }
  | { kind: 'upload'; name: string }
  | { kind: 'token' }
  | { kind: 'unknown' };

/** Parses a raw path (e.g. `/v2/docker-hub/library/nginx/manifests/1.27`) into a {@link Route}. */
export function parseRoute(path: string): Route {
  if (path === '/v2' || path === '/v2/') return { kind: 'base' };
  if (path === '/token') return { kind: 'token' };
  if (!path.startsWith('/v2/')) return { kind: 'unknown' };
  const rest = path.slice('/v2/'.length);
  if (rest === '_catalog') return { kind: 'catalog' };
  const parts = rest.split('/');
  const n = parts.length;
  if (n >= 3 && parts[n - 2] === 'tags' && parts[n - 1] === 'list') return { kind: 'tags', name: parts.slice(0, n - 2).join('/') };
  // blobs/uploads/ and blobs/uploads/<uuid>: push, refused later with UNSUPPORTED.
  const uploads = rest.lastIndexOf('/blobs/uploads');
  if (uploads > 0 && (rest.endsWith('/blobs/uploads') || rest.endsWith('/blobs/uploads/') || parts[n - 2] === 'uploads')) {
    return { kind: 'upload', name: rest.slice(0, uploads) };
  }
  if (n >= 3) {
    const name = parts.slice(0, n - 2).join('/');
    const last = parts[n - 1];
    switch (parts[n - 2]) {
      case 'manifests':
        return { kind: 'manifest', name, reference: last };
      case 'blobs':
        return { kind: 'blob', name, digest: last };
      case 'referrers':
        return { kind: 'referrers', name, digest: last };
    }
  }
  return { kind: 'unknown' };
}
