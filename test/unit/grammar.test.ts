import { describe, expect, it } from 'vitest';
import { isDigest, sha256Digest } from '../../shared/oci/digest.js';
import { isValidName, isValidTag, parseReference } from '../../shared/oci/reference.js';
import { RegistryError } from '../../shared/oci/errors.js';

const hex64 = 'a'.repeat(64);

describe('repository name grammar (OCI distribution spec)', () => {
  it.each([
    ['docker-hub/library/nginx', true],
    ['a', true],
    ['a/b/c/d', true],
    ['my.repo_name__x-y--z/ok', true],
    ['Docker-hub/x', false],
    ['a//b', false],
    ['/a', false],
    ['a/', false],
    ['a/../b', false],
    ['a/%2e%2e/b', false],
    ['a%2Fb', false],
    ['a/-b', false],
    ['a/b.', false],
    ['a___b', false],
    ['x'.repeat(256), false],
    ['', false],
  ])('%s → %s', (name, ok) => expect(isValidName(name)).toBe(ok));
});

describe('tag grammar', () => {
  it.each([
    ['latest', true],
    ['1.27.0-alpine', true],
    ['_under', true],
    ['sha256-' + hex64 + '.sig', true],
    ['x'.repeat(128), true],
    ['x'.repeat(129), false],
    ['.dot', false],
    ['-dash', false],
    ['a/b', false],
    ['', false],
  ])('%s → %s', (tag, ok) => expect(isValidTag(tag)).toBe(ok));
});

describe('digests', () => {
  it.each([
    [`sha256:${hex64}`, true],
    [`sha512:${'b'.repeat(128)}`, true],
    [`sha256:${'A'.repeat(64)}`, false],
    [`sha256:${hex64}0`, false],
    [`sha512:${hex64}`, false],
    [`md5:${'a'.repeat(32)}`, false],
    ['sha256:', false],
  ])('%s → %s', (d, ok) => expect(isDigest(d)).toBe(ok));

  it('computes the SHA-256 of bytes', () => {
    expect(sha256Digest('')).toBe('sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  it('parses references into tags and digests, with the spec error codes', () => {
    expect(parseReference('latest')).toEqual({ kind: 'tag', tag: 'latest' });
    expect(parseReference(`sha256:${hex64}`)).toEqual({ kind: 'digest', digest: `sha256:${hex64}` });
    expect(() => parseReference('sha256:xyz')).toThrow(expect.objectContaining({ code: 'DIGEST_INVALID', status: 400 }) as RegistryError);
    // A tag outside the grammar names nothing that can exist: unknown, not malformed (conformance suite, distribution).
    for (const bad of ['x'.repeat(129), '.INVALID_MANIFEST_NAME', '', 'v1@x', '-v1']) {
      expect(() => parseReference(bad)).toThrow(expect.objectContaining({ code: 'MANIFEST_UNKNOWN', status: 404 }) as RegistryError);
    }
  });
});
