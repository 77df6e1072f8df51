/**
 * The local server's signed blob URLs (shared/store/fs-blob-urls.ts) and the blob route that checks them
 * (bin/blob-route.ts): a URL opens exactly the blob it was signed for, until it expires. Expired, tampered and
 * re-pointed URLs are refused, over HTTP too, even when the blob they point at is stored.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import type { Logger } from '@aws-lambda-powertools/logger';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBlobRoute } from '../../bin/blob-route.js';
import { sha256Digest, type Digest } from '../../shared/oci/digest.js';
import { openFsBlobStore, type FsBlobStore } from '../../shared/store/fs-blob-store.js';
import { signBlobUrl, signedBlobUrl, verifyBlobUrl } from '../../shared/store/fs-blob-urls.js';
import { silentLog } from '../support/harness.js';

const key = Buffer.alloc(32, 7);
const a = Buffer.from('blob a bytes');
const b = Buffer.from('blob b bytes, also stored');
const digestA = sha256Digest(a);
const digestB = sha256Digest(b);
const hexOf = (d: Digest) => d.slice('sha256:'.length);
const nowSeconds = () => Math.floor(Date.now() / 1000);

/** A URL for `digest` expiring at `expires` (unix s), signed with `signingKey`, split into path and query. */
function urlFor(digest: Digest, expires: number, signingKey = key) {
  return { path: `/_blobs/sha256/${hexOf(digest)}`, query: new URLSearchParams({ expires: String(expires), signature: signBlobUrl(signingKey, digest, expires) }) };
}

/** The ways a URL is made to open what it was not signed for: each must be refused. */
function forgeries(now: number): Array<[string, { path: string; query: URLSearchParams }]> {
  const valid = urlFor(digestA, now + 600);
  const sig = valid.query.get('signature')!;
  const flipped = `${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`;
  return [
    ['expired a second ago', urlFor(digestA, now - 1)],
    ['signature changed in one character', { path: valid.path, query: new URLSearchParams({ expires: String(now + 600), signature: flipped }) }],
    ['expiry pushed later under the same signature', { path: valid.path, query: new URLSearchParams({ expires: String(now + 86_400), signature: sig }) }],
    ['pointed at another stored digest under the same signature', { path: `/_blobs/sha256/${hexOf(digestB)}`, query: valid.query }],
    ['pointed at the same hex as sha512', { path: `/_blobs/sha512/${hexOf(digestA)}`, query: valid.query }],
    ['signed with another key', urlFor(digestA, now + 600, Buffer.alloc(32, 8))],
    ['without a signature', { path: valid.path, query: new URLSearchParams({ expires: String(now + 600) }) }],
    ['with a fractional expiry', { path: valid.path, query: new URLSearchParams({ expires: `${now + 600}.5`, signature: sig }) }],
    ['with a path outside /_blobs/', { path: `/_blobs/sha256/../${hexOf(digestA)}`, query: valid.query }],
  ];
}

describe('verifyBlobUrl', () => {
  it('accepts a URL signed for the digest until its expiry second, inclusive', () => {
    const now = nowSeconds();
    const { path, query } = urlFor(digestA, now + 60);
    expect(verifyBlobUrl(key, path, query, now)).toBe(digestA);
    expect(verifyBlobUrl(key, path, query, now + 60)).toBe(digestA);
    expect(verifyBlobUrl(key, path, query, now + 61)).toBeUndefined();
  });

  it('signedBlobUrl hands out a URL valid for its TTL from now, and no longer', () => {
    const [path, q] = signedBlobUrl(key, digestA, 900).split('?');
    const query = new URLSearchParams(q);
    expect(Number(query.get('expires')) - nowSeconds()).toBeGreaterThanOrEqual(899);
    expect(Number(query.get('expires')) - nowSeconds()).toBeLessThanOrEqual(900);
    expect(verifyBlobUrl(key, path, query, nowSeconds())).toBe(digestA);
    expect(verifyBlobUrl(key, path, query, nowSeconds() + 901)).toBeUndefined();
  });

  it.each(forgeries(nowSeconds()))('refuses a URL %s', (_, { path, query }) => {
    expect(verifyBlobUrl(key, path, query, nowSeconds())).toBeUndefined();
  });
});

describe('the blob route refuses forged URLs over HTTP (403 DENIED), even to stored blobs', () => {
  let dir: string;
  let store: FsBlobStore;
  let server: Server;
  let base: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'pt-blob-urls-'));
    store = await openFsBlobStore(dir, { signingKey: key });
    await store.write(digestA, Readable.from([a]), a.length);
    await store.write(digestB, Readable.from([b]), b.length);
    const route = createBlobRoute({ blobStore: store, logger: silentLog as unknown as Logger });
    server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      void route(req, res, url.pathname, url.searchParams).catch(() => res.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the exact bytes to the URL the store hands out', async () => {
    const loc = await store.locate(digestB);
    expect(loc.kind).toBe('redirect');
    const res = await fetch(`${base}${(loc as { url: string }).url}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(digestB);
    expect(Buffer.from(await res.arrayBuffer()).equals(b)).toBe(true);
  });

  it('a URL handed out while a write runs is bound to that write: after it fails, never another write\'s copy', async () => {
    store.enableStreamWhileFilling();
    const c = Buffer.from('blob c: the bytes another rule stores later');
    const digestC = sha256Digest(c);
    const lying = new PassThrough();
    const failed = store.write(digestC, lying, c.length).then(() => 'committed', () => 'failed');
    lying.write(Buffer.alloc(8, 'x')); // an upstream sending other bytes under digestC
    const bound = ((await store.locate(digestC)) as { url: string }).url;
    expect(new URL(bound, 'http://x').searchParams.get('fill')).toMatch(/^[0-9a-f-]{36}$/);
    lying.end(Buffer.alloc(c.length - 8, 'x'));
    expect(await failed).toBe('failed');
    // Stripping the binding breaks the signature.
    const stripped = new URL(bound, 'http://x');
    stripped.searchParams.delete('fill');
    expect((await fetch(`${base}${stripped.pathname}?${stripped.searchParams}`)).status).toBe(403);
    // The digest's real bytes are stored later (another rule's fill): the failed write's URL does not serve them.
    const honest = new PassThrough();
    const committed = store.write(digestC, honest, c.length);
    const boundToHonest = ((await store.locate(digestC)) as { url: string }).url;
    honest.end(c);
    await committed;
    const res = await fetch(`${base}${bound}`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('UNAVAILABLE');
    // The URL bound to the write that committed, and one handed out after the commit, serve the bytes.
    for (const url of [boundToHonest, ((await store.locate(digestC)) as { url: string }).url]) {
      const ok = await fetch(`${base}${url}`);
      expect(ok.status).toBe(200);
      expect(Buffer.from(await ok.arrayBuffer()).equals(c)).toBe(true);
    }
    expect(new URL(((await store.locate(digestC)) as { url: string }).url, 'http://x').searchParams.get('fill')).toBeNull();
  });

  it.each(forgeries(nowSeconds()))('a URL %s', async (_, { path, query }) => {
    const res = await fetch(`${base}${path}?${query}`);
    expect(res.status).toBe(403);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('DENIED');
  });
});
