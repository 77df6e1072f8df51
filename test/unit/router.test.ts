import { describe, expect, it } from 'vitest';
import { parseRoute } from '../../shared/http/router.js';

describe('parseRoute reads names with slashes from the right', () => {
  it.each([
    ['/v2/', { kind: 'base' }],
    ['/v2', { kind: 'base' }],
    ['/v2/_catalog', { kind: 'catalog' }],
    ['/v2/docker-hub/library/nginx/manifests/1.27', { kind: 'manifest', name: 'docker-hub/library/nginx', reference: '1.27' }],
    ['/v2/ghcr/a/b/c/manifests/sha256:abc', { kind: 'manifest', name: 'ghcr/a/b/c', reference: 'sha256:abc' }],
    ['/v2/local/manifests/manifests/latest', { kind: 'manifest', name: 'local/manifests', reference: 'latest' }],
    ['/v2/local/blobs/manifests/x', { kind: 'manifest', name: 'local/blobs', reference: 'x' }],
    ['/v2/quay/x/blobs/sha256:00', { kind: 'blob', name: 'quay/x', digest: 'sha256:00' }],
    ['/v2/quay/x/tags/list', { kind: 'tags', name: 'quay/x' }],
    ['/v2/quay/tags/tags/list', { kind: 'tags', name: 'quay/tags' }],
    ['/v2/quay/x/referrers/sha256:00', { kind: 'referrers', name: 'quay/x', digest: 'sha256:00' }],
    ['/v2/quay/x/blobs/uploads/', { kind: 'upload', name: 'quay/x' }],
    ['/v2/quay/x/blobs/uploads/0b0e-uuid', { kind: 'upload', name: 'quay/x' }],
    ['/v2/x/manifests/', { kind: 'manifest', name: 'x', reference: '' }],
    ['/v3/x/manifests/latest', { kind: 'unknown' }],
    ['/v2/x/whatever/latest', { kind: 'unknown' }],
    ['/v2/manifests/latest', { kind: 'unknown' }],
    ['/', { kind: 'unknown' }],
  ])('%s', (path, expected) => {
    expect(parseRoute(path)).toEqual(expected);
  });
});
