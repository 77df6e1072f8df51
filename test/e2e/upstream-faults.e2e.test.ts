/**
 * The upstream misbehaves; the cache stays correct. Debian's docker-registry is the upstream, behind a
 * fault-injecting proxy (../support/fault-proxy.ts) that, per request matcher, answers 429 with `Retry-After`,
 * answers 500, hangs, truncates a body mid-stream, or flips bytes in it. The real local server sits in front,
 * configured with short timeouts so every slow path ends within seconds. For each fault the test states what the
 * client sees (status, headers, bytes) and that the store holds no bad byte: no blob file for the digest, no
 * temp file left, a manifest that failed verification fetched again (right bytes) once the fault is off.
 *
 * Blob misses: the local server may stream a blob to the client while it is filled and verified (then a bad
 * fill cuts the client's body short instead of answering an error status), or wait for the commit (then the
 * client gets 503). The blob assertions accept either, but never a complete body whose bytes are wrong.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { buildLayer, MediaTypes, pushBlob, pushManifest } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256, type PulledImage } from '../support/pull.js';
import { scratchDir } from '../support/scratch.js';
import { assertSkopeoOk, imageRef, skopeoCopy, skopeoInspect } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const KiB = 1024;
/** Generous bound (ms) for answers that the short timeouts below should bring in at ~1-3 s. */
const BOUND_MS = 5000;

let upstream: UpstreamRegistry;
let faults: FaultProxy;
let cache: LocalServer;

/** A single-platform Docker schema2 image pushed to the upstream; layers are real tar.gz of random bytes. */
interface TestImage {
  name: string;
  tag: string;
  digest: string;
  manifest: Buffer;
  config: { digest: string; size: number };
  layers: Array<{ digest: string; size: number }>;
}

/** Pushes `name:tag` with one layer per size (random content, so every blob is new to the cache). */
async function pushRandomImage(name: string, tag: string, layerBytes: number[]): Promise<TestImage> {
  const layers = await Promise.all(layerBytes.map((n, i) => buildLayer([], [{ name: `data/${name.replace(/\//g, '_')}-${tag}-${i}.bin`, data: randomBytes(n) }])));
  for (const l of layers) await pushBlob(upstream.url, name, { digest: l.digest, size: l.size, path: l.path });
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'], Labels: { test: `${name}:${tag}` } },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    }),
  );
  const configRef = { digest: sha256(config), size: config.length };
  await pushBlob(upstream.url, name, { ...configRef, data: config });
  const manifest = Buffer.from(
    JSON.stringify(
      {
        schemaVersion: 2,
        mediaType: MediaTypes.dockerManifest,
        config: { mediaType: MediaTypes.dockerConfig, ...configRef },
        layers: layers.map((l) => ({ mediaType: MediaTypes.dockerLayerGzip, size: l.size, digest: l.digest })),
      },
      null,
      3,
    ),
  );
  const digest = await pushManifest(upstream.url, name, tag, MediaTypes.dockerManifest, manifest);
  return { name, tag, digest, manifest, config: configRef, layers: layers.map((l) => ({ digest: l.digest, size: l.size })) };
}

const blobFile = (digest: string) => join(cache.dataDir, 'blobs', 'sha256', digest.slice('sha256:'.length));
const tmpFiles = () => readdirSync(join(cache.dataDir, 'tmp'));

/** The store holds no file for `digest` and, once the failed fill cleaned up (bounded wait), no temp file. */
async function expectNothingStored(digest: string): Promise<void> {
  expect(existsSync(blobFile(digest))).toBe(false);
  const deadline = Date.now() + BOUND_MS;
  while (tmpFiles().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(tmpFiles()).toEqual([]);
  expect(existsSync(blobFile(digest))).toBe(false);
}

/** The OCI error code of a JSON error response. */
async function errorCode(res: Response): Promise<string | undefined> {
  const body = (await res.json()) as { errors?: Array<{ code: string }> };
  return body.errors?.[0]?.code;
}

/** What a client got for a blob GET (redirects followed), read to the end or to the connection's failure. */
interface BlobOutcome {
  status: number;
  contentLength: string | null;
  /** Redirect hops the client followed (the fetch API does not expose them: counted by hand). */
  hops: string[];
  bytes: Buffer;
  bodyError?: string;
  code?: string;
  retryAfter?: string | null;
  ms: number;
}

/** GETs a blob through the cache following up to 10 redirects by hand, so every hop is seen; reads the body. */
async function getBlob(name: string, digest: string): Promise<BlobOutcome> {
  const t0 = Date.now();
  let url = new URL(`/v2/${name}/blobs/${digest}`, cache.url);
  const hops: string[] = [];
  for (let i = 0; i <= 10; i++) {
    const res = await fetch(url, { redirect: 'manual', signal: AbortSignal.timeout(30_000) });
    if (res.status === 307) {
      await res.body?.cancel();
      hops.push(res.headers.get('location')!);
      url = new URL(res.headers.get('location')!, url);
      continue;
    }
    const out: BlobOutcome = { status: res.status, contentLength: res.headers.get('content-length'), hops, bytes: Buffer.alloc(0), ms: 0 };
    if (res.status >= 400) {
      out.code = await errorCode(res);
      out.retryAfter = res.headers.get('retry-after');
    } else {
      const chunks: Buffer[] = [];
      try {
        for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c));
      } catch (err) {
        out.bodyError = `${(err as Error).message}${(err as { cause?: Error }).cause ? `: ${(err as { cause?: Error }).cause!.message}` : ''}`;
      }
      out.bytes = Buffer.concat(chunks);
    }
    out.ms = Date.now() - t0;
    return out;
  }
  throw new Error(`more than 10 redirects for ${digest}`);
}

/**
 * A failed blob fill as a client may see it: an error status (503 UNAVAILABLE), or a 200 whose body broke off
 * before it was complete. Never a complete body with wrong bytes, never a complete body at all.
 */
function expectFailedBlob(got: BlobOutcome, blob: { digest: string; size: number }): void {
  if (got.status === 200) {
    expect(got.bodyError, 'a 200 body of a failed fill must break off').toBeDefined();
    expect(got.bytes.length).toBeLessThan(blob.size);
    if (got.contentLength !== null) expect(Number(got.contentLength)).toBe(blob.size);
  } else {
    expect(got.status).toBe(503);
    expect(got.code).toBe('UNAVAILABLE');
    expect(got.retryAfter).toMatch(/^\d+$/);
  }
  // Whatever arrived is never the whole blob, so no client can take wrong bytes for the blob.
  expect(got.bytes.length === blob.size && sha256(got.bytes) === blob.digest).toBe(false);
}

/** Pulls `ref` with skopeo into a new dir; returns the manifest and each blob file's name and actual digest. */
const pull = (ref: string) => pullImage(ref, { timeoutMs: 60_000, dirPrefix: 'fault-pull-' });

/**
 * The pull got the whole image, and the store holds each blob with the right bytes. A blob streamed while it was
 * filled reaches the client once verified, a moment before the store's fsync + rename: wait for that (bounded).
 */
async function expectWholeImage(got: PulledImage, img: TestImage): Promise<void> {
  expect(sha256(got.manifest)).toBe(img.digest);
  expect(got.blobs.map((b) => b.name).sort()).toEqual([img.config, ...img.layers].map((b) => b.digest).sort());
  for (const b of got.blobs) expect(b.actual).toBe(b.name);
  for (const b of [img.config, ...img.layers]) {
    for (const deadline = Date.now() + BOUND_MS; !existsSync(blobFile(b.digest)) && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
    expect(sha256(readFileSync(blobFile(b.digest)))).toBe(b.digest);
  }
}

const manifestPath = (img: TestImage, ref: string) => new RegExp(`^/v2/${img.name}/manifests/${ref.replace(/[:.]/g, '\\$&')}$`);
const blobPath = (img: TestImage, digest: string) => new RegExp(`^/v2/${img.name}/blobs/${digest.replace(':', '\\:')}$`);

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  faults = await startFaultProxy(upstream.url);
  cache = await startLocalServer({
    rules: [
      {
        prefix: 'local',
        upstream: faults.url,
        ttlSeconds: 3600,
        // Tags named stale* are re-checked on every pull (TTL 0): the stale-tag paths without sleeping.
        frequentTags: { pattern: '^stale', ttlSeconds: 0 },
        upstreamTimeoutSeconds: 2,
        revalidateTimeoutSeconds: 1,
        negativeCacheSeconds: 0,
      },
    ],
    blobFill: { waitSeconds: 3, maxHops: 1 },
  });
});

afterEach(() => faults?.clear());

afterAll(async () => {
  await cache?.stop();
  await faults?.stop();
  await upstream?.stop();
});

describe('429 Too Many Requests with Retry-After', () => {
  it('uncached manifest: the client gets 429 TOOMANYREQUESTS with the upstream Retry-After; nothing is remembered', async () => {
    const img = await pushRandomImage('rl/app', 'v1', [8 * KiB]);
    faults.add({ method: 'GET', path: manifestPath(img, 'v1'), kind: 'status', status: 429, headers: { 'Retry-After': '7' } });
    faults.reset();
    const res = await fetch(`${cache.url}/v2/local/rl/app/manifests/v1`);
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('7');
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await errorCode(res)).toBe('TOOMANYREQUESTS');
    const head = await fetch(`${cache.url}/v2/local/rl/app/manifests/v1`, { method: 'HEAD' });
    expect(head.status).toBe(429);
    expect(head.headers.get('retry-after')).toBe('7');
    // Each client request asked the upstream once (no retry storm), and was answered with the injected 429.
    expect(faults.requests.map((r) => `${r.method} ${r.status}`)).toEqual(['GET 429', 'GET 429']);

    // skopeo sees the 429 (it honours Retry-After itself, so the fault answers once here and the retry passes).
    faults.clear();
    faults.add({ method: 'GET', path: manifestPath(img, 'v1'), kind: 'status', status: 429, headers: { 'Retry-After': '1' }, times: 1 });
    faults.reset();
    const t0 = Date.now();
    const inspect = assertSkopeoOk(await skopeoInspect(imageRef(cache.url, 'local/rl/app', 'v1'), { raw: true, timeoutMs: 30_000 }));
    expect(Buffer.from(inspect.stdout).equals(img.manifest)).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(faults.requests.filter((r) => r.method === 'GET').map((r) => r.status)).toEqual([429, 200]);
  });

  it('cached stale tag: a 429 on the re-check serves the cached manifest (200, same digest)', async () => {
    const img = await pushRandomImage('rl/app', 'stale-1', [8 * KiB]);
    const first = await fetch(`${cache.url}/v2/local/rl/app/manifests/stale-1`);
    expect(first.status).toBe(200);
    expect(first.headers.get('docker-content-digest')).toBe(img.digest);
    faults.add({ path: manifestPath(img, 'stale-1'), kind: 'status', status: 429, headers: { 'Retry-After': '7' } });
    faults.reset();
    const res = await fetch(`${cache.url}/v2/local/rl/app/manifests/stale-1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(img.digest);
    expect(Buffer.from(await res.arrayBuffer()).equals(img.manifest)).toBe(true);
    expect(faults.requests).toEqual([{ method: 'HEAD', path: '/v2/rl/app/manifests/stale-1', status: 429, fault: 'status' }]);
    const inspect = assertSkopeoOk(await skopeoInspect(imageRef(cache.url, 'local/rl/app', 'stale-1'), { raw: true }));
    expect(Buffer.from(inspect.stdout).equals(img.manifest)).toBe(true);
  });
});

describe('500 Internal Server Error', () => {
  it('uncached manifest and blob: 503 UNAVAILABLE (not 404) with Retry-After; the fault off, they fill', async () => {
    const img = await pushRandomImage('err/app', 'v1', [16 * KiB]);
    faults.add({ path: /^\/v2\/err\/app\//, kind: 'status', status: 500 });
    for (const ref of ['v1', img.digest]) {
      const res = await fetch(`${cache.url}/v2/local/err/app/manifests/${ref}`);
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('30');
      expect(await errorCode(res)).toBe('UNAVAILABLE');
    }
    const layer = img.layers[0];
    const got = await getBlob('local/err/app', layer.digest);
    expect({ status: got.status, code: got.code, hops: got.hops.length }).toEqual({ status: 503, code: 'UNAVAILABLE', hops: 0 });
    expect(got.retryAfter).toMatch(/^\d+$/);
    expect(got.ms).toBeLessThan(BOUND_MS);
    const inspect = await skopeoInspect(imageRef(cache.url, 'local/err/app', 'v1'), { raw: true, timeoutMs: 60_000 });
    expect(inspect.code).not.toBe(0);
    expect(inspect.stderr).toMatch(/503|unavailable/i);
    await expectNothingStored(layer.digest);

    faults.clear();
    await expectWholeImage(await pull(imageRef(cache.url, 'local/err/app', 'v1')), img);
  });

  it('cached tag (stale) and cached digests: still served while the upstream answers 500', async () => {
    const img = await pushRandomImage('err/app', 'stale-2', [16 * KiB]);
    await expectWholeImage(await pull(imageRef(cache.url, 'local/err/app', 'stale-2')), img);
    faults.add({ path: /^\/v2\/err\/app\//, kind: 'status', status: 500 });
    faults.reset();
    await expectWholeImage(await pull(imageRef(cache.url, 'local/err/app', 'stale-2')), img);
    await expectWholeImage(await pull(imageRef(cache.url, 'local/err/app', img.digest)), img);
    // Only the stale tag's re-check asked the upstream (one HEAD per pull); digests and blobs never.
    expect(faults.requests.map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual([`HEAD /v2/err/app/manifests/stale-2 500`]);
  });
});

describe('a hanging upstream', () => {
  it('stale tag whose re-check HEAD hangs: the cached manifest is served within the revalidate timeout', async () => {
    const img = await pushRandomImage('hang/app', 'stale-3', [8 * KiB]);
    expect((await fetch(`${cache.url}/v2/local/hang/app/manifests/stale-3`)).status).toBe(200);
    faults.add({ method: 'HEAD', path: manifestPath(img, 'stale-3'), kind: 'hang' });
    const t0 = Date.now();
    const res = await fetch(`${cache.url}/v2/local/hang/app/manifests/stale-3`, { signal: AbortSignal.timeout(20_000) });
    const ms = Date.now() - t0;
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(img.digest);
    expect(Buffer.from(await res.arrayBuffer()).equals(img.manifest)).toBe(true);
    expect(ms).toBeGreaterThanOrEqual(900); // it did wait for the re-check (revalidateTimeoutSeconds: 1)...
    expect(ms).toBeLessThan(BOUND_MS); // ...and no longer
    // skopeo too (a full pull of the cached image, every re-check hanging).
    const t1 = Date.now();
    await expectWholeImage(await pull(imageRef(cache.url, 'local/hang/app', 'stale-3')), img);
    expect(Date.now() - t1).toBeLessThan(3 * BOUND_MS);
  });

  it('uncached manifest whose GET hangs: 503 UNAVAILABLE within the upstream timeout', async () => {
    const img = await pushRandomImage('hang/app', 'v1', [8 * KiB]);
    faults.add({ method: 'GET', path: manifestPath(img, 'v1'), kind: 'hang' });
    const t0 = Date.now();
    const res = await fetch(`${cache.url}/v2/local/hang/app/manifests/v1`, { signal: AbortSignal.timeout(20_000) });
    expect(res.status).toBe(503);
    expect(await errorCode(res)).toBe('UNAVAILABLE');
    expect(Date.now() - t0).toBeLessThan(BOUND_MS);
    faults.clear();
    const ok = await fetch(`${cache.url}/v2/local/hang/app/manifests/v1`);
    expect(ok.headers.get('docker-content-digest')).toBe(img.digest);
  });

  it('uncached blob whose GET hangs: a 307 hop or 503 within the bound, nothing stored; the fault off, it fills', async () => {
    const img = await pushRandomImage('hang/app', 'v2', [64 * KiB]);
    expect((await fetch(`${cache.url}/v2/local/hang/app/manifests/v2`)).status).toBe(200);
    const layer = img.layers[0];
    faults.add({ method: 'GET', path: blobPath(img, layer.digest), kind: 'hang' });
    const t0 = Date.now();
    const first = await fetch(`${cache.url}/v2/local/hang/app/blobs/${layer.digest}`, { redirect: 'manual', signal: AbortSignal.timeout(20_000) });
    const ms = Date.now() - t0;
    expect(ms).toBeLessThan(BOUND_MS);
    if (first.status === 307) {
      // Still waiting for the upstream at the deadline: come back (same URL, next hop).
      expect(first.headers.get('location')).toMatch(new RegExp(`/v2/local/hang/app/blobs/${layer.digest}\\?pt-hop=1$`));
      await first.body?.cancel();
    } else {
      expect(first.status).toBe(503);
      expect(await errorCode(first)).toBe('UNAVAILABLE');
      expect(first.headers.get('retry-after')).toMatch(/^\d+$/);
    }
    // Followed to the end, the client gets 503 UNAVAILABLE (the hang outlives every hop), quickly.
    const got = await getBlob('local/hang/app', layer.digest);
    expect({ status: got.status, code: got.code }).toEqual({ status: 503, code: 'UNAVAILABLE' });
    expect(got.ms).toBeLessThan(2 * BOUND_MS);
    await expectNothingStored(layer.digest);
    faults.clear();
    // The cache gave up on (closed) every hung upstream request.
    for (const deadline = Date.now() + BOUND_MS; faults.hanging > 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 50));
    expect(faults.hanging).toBe(0);
    await expectWholeImage(await pull(imageRef(cache.url, 'local/hang/app', 'v2')), img);
  });
});

/**
 * The two ways a blob body goes bad on the wire: cut short (the connection closes after 100 KiB of 256 KiB, under
 * the upstream's full `Content-Length`), or complete but with one byte flipped in the middle.
 */
const BAD_BODIES = [
  { what: 'truncated mid-stream', repo: 'cut', fault: (pauseMs?: number) => ({ kind: 'truncate' as const, afterBytes: 100 * KiB, pauseMs }), upstreamBytes: (_size: number) => 100 * KiB },
  { what: 'with wrong bytes', repo: 'bad', fault: (pauseMs?: number) => ({ kind: 'corrupt' as const, pauseMs }), upstreamBytes: (size: number) => size },
];

for (const c of BAD_BODIES) {
  describe(`a blob ${c.what}`, () => {
    it('while the client reads it: an error status or a body that breaks off; nothing stored; the fault off, it refills', async () => {
      const img = await pushRandomImage(`${c.repo}/app`, 'v1', [256 * KiB]);
      expect((await fetch(`${cache.url}/v2/local/${c.repo}/app/manifests/v1`)).status).toBe(200);
      const layer = img.layers[0];
      // The bad end of the body comes 700 ms late, so the client is reading (or waiting) when the fill fails.
      const fault = faults.add({ method: 'GET', path: blobPath(img, layer.digest), ...c.fault(700) });
      faults.reset();
      const got = await getBlob(`local/${c.repo}/app`, layer.digest);
      expectFailedBlob(got, layer);
      expect(got.ms).toBeLessThan(BOUND_MS);
      expect(fault.hits).toBe(1);
      expect(faults.requests.find((r) => r.path.includes(layer.digest))).toMatchObject({ status: 200, fault: fault.spec.kind, bodyBytes: c.upstreamBytes(layer.size) });
      await expectNothingStored(layer.digest);

      faults.clear();
      faults.reset();
      await expectWholeImage(await pull(imageRef(cache.url, `local/${c.repo}/app`, 'v1')), img);
      // A fresh fill from scratch: the whole blob came from the upstream again, once.
      expect(faults.requests.filter((r) => r.method === 'GET' && r.path === `/v2/${c.repo}/app/blobs/${layer.digest}`)).toEqual([
        { method: 'GET', path: `/v2/${c.repo}/app/blobs/${layer.digest}`, status: 200, bodyBytes: layer.size },
      ]);
    });

    it('once the fill failed, the blob answers 503 UNAVAILABLE, never 404: a late redirect, and skopeo', async () => {
      const img = await pushRandomImage(`${c.repo}/app`, 'v2', [256 * KiB]);
      expect((await fetch(`${cache.url}/v2/local/${c.repo}/app/manifests/v2`)).status).toBe(200);
      const layer = img.layers[0];
      faults.add({ method: 'GET', path: blobPath(img, layer.digest), ...c.fault() });
      const first = await fetch(`${cache.url}/v2/local/${c.repo}/app/blobs/${layer.digest}`, { redirect: 'manual' });
      if (first.status === 307) {
        // Streamed while filling: the redirect went out when the upstream started sending. Let the fill fail first.
        const location = new URL(first.headers.get('location')!, cache.url);
        await expectNothingStored(layer.digest);
        await new Promise((r) => setTimeout(r, 200));
        const late = await fetch(location);
        const body = Buffer.from(await late.arrayBuffer());
        expect(`${late.status} ${body.toString('utf8').slice(0, 200)}`).toMatch(/^503 /);
        expect(JSON.parse(body.toString('utf8')).errors[0].code).toBe('UNAVAILABLE');
        expect(late.headers.get('retry-after')).toMatch(/^\d+$/);
      } else {
        expect(first.status).toBe(503);
        expect(await errorCode(first)).toBe('UNAVAILABLE');
      }
      await expectNothingStored(layer.digest);

      // skopeo's pull fails (the fault stays on) with a transient error, not "404 Not Found"; nothing is stored.
      const dir = scratchDir('fault-pull-');
      const failed = await skopeoCopy(imageRef(cache.url, `local/${c.repo}/app`, 'v2'), dir, { timeoutMs: 60_000 });
      expect(failed.code).not.toBe(0);
      // e.g. `reading blob sha256:…: … 503 (Service Unavailable)`, or `writing blob: happened during read: unexpected EOF`
      expect(failed.stderr).toMatch(/blob/);
      expect(failed.stderr).not.toMatch(/\b404\b|not found/i);
      expect(existsSync(join(dir, layer.digest.slice('sha256:'.length)))).toBe(false);
      await expectNothingStored(layer.digest);

      faults.clear();
      await expectWholeImage(await pull(imageRef(cache.url, `local/${c.repo}/app`, 'v2')), img);
    });
  });
}

describe('wrong bytes from the upstream (manifests)', () => {
  it('manifest by digest: 502 DIGEST_INVALID, nothing stored; the fault off, the right bytes', async () => {
    const img = await pushRandomImage('badm/app', 'v2', [8 * KiB]);
    faults.add({ method: 'GET', path: manifestPath(img, img.digest), kind: 'corrupt' });
    faults.reset();
    const res = await fetch(`${cache.url}/v2/local/badm/app/manifests/${img.digest}`);
    expect(res.status).toBe(502);
    expect(await errorCode(res)).toBe('DIGEST_INVALID');
    expect(res.headers.get('docker-content-digest')).toBeNull();
    const head = await fetch(`${cache.url}/v2/local/badm/app/manifests/${img.digest}`, { method: 'HEAD' });
    expect(head.status).toBe(502);
    expect(faults.requests.map((r) => `${r.method} ${r.status} ${r.fault}`)).toEqual(['GET 200 corrupt', 'GET 200 corrupt']);

    faults.clear();
    faults.reset();
    const ok = await fetch(`${cache.url}/v2/local/badm/app/manifests/${img.digest}`);
    expect(ok.status).toBe(200);
    expect(Buffer.from(await ok.arrayBuffer()).equals(img.manifest)).toBe(true);
    // It was not cached before: this GET went upstream; the next one does not.
    expect(faults.count((r) => r.method === 'GET')).toBe(1);
    expect((await fetch(`${cache.url}/v2/local/badm/app/manifests/${img.digest}`)).status).toBe(200);
    expect(faults.count()).toBe(1);
  });

  it('manifest by tag: the bytes do not match the upstream Docker-Content-Digest → 502 DIGEST_INVALID, tag not cached', async () => {
    const img = await pushRandomImage('badm/app', 'v3', [8 * KiB]);
    faults.add({ method: 'GET', path: manifestPath(img, 'v3'), kind: 'corrupt' });
    const res = await fetch(`${cache.url}/v2/local/badm/app/manifests/v3`);
    expect(res.status).toBe(502);
    expect(await errorCode(res)).toBe('DIGEST_INVALID');
    faults.clear();
    faults.reset();
    const ok = await fetch(`${cache.url}/v2/local/badm/app/manifests/v3`);
    expect(ok.headers.get('docker-content-digest')).toBe(img.digest);
    expect(Buffer.from(await ok.arrayBuffer()).equals(img.manifest)).toBe(true);
    expect(faults.count((r) => r.method === 'GET')).toBe(1);
  });
});
