/**
 * The first working cache, end to end: Debian's docker-registry as the upstream (behind a counting proxy),
 * the real local server (`node --import tsx bin/server.ts`), and skopeo as the client. Images are built from
 * real files of this machine's Debian packages: an OCI image index and a Docker manifest list (amd64 + arm64),
 * and a single-platform image.
 *
 * The last block streams blobs while they are filled (the first pulls above do too, but a loopback registry is
 * too fast to observe it): the in-process fake upstream's `slowBody` / `wrongBytes` switches, the real server.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { pushMultiArchImage, pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256 } from '../support/pull.js';
import { assertSkopeoOk, imageRef, skopeoInspect, skopeoListTags } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';


let upstream: UpstreamRegistry;
let proxy: CountingProxy;
let cache: LocalServer;
let ociIndex: PushedImage;
let dockerList: PushedImage;
let single: PushedImage;

/** Pulls `ref` with skopeo into a new dir; returns the manifest bytes and every blob file's name and bytes digest. */
const pull = (ref: string, arch?: string) => pullImage(ref, { arch });

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  ociIndex = await pushMultiArchImage(upstream.url, 'team/multi', 'oci', { format: 'oci' });
  dockerList = await pushMultiArchImage(upstream.url, 'team/multi', 'docker', { format: 'docker' });
  single = await pushSinglePlatformImage(upstream.url, 'team/single', 'v1', {
    format: 'docker',
    arch: 'amd64',
    layerSources: ['/usr/share/common-licenses', '/usr/share/doc/libc6'],
  });
  proxy = await startCountingProxy(upstream.url);
  cache = await startLocalServer({ rules: [{ prefix: 'local', upstream: proxy.url }] });
});

afterAll(async () => {
  await cache?.stop();
  await proxy?.stop();
  await upstream?.stop();
});

describe('pulling real multi-arch images through the cache with skopeo', () => {
  for (const which of ['oci', 'docker'] as const) {
    for (const arch of ['amd64', 'arm64'] as const) {
      it(`${which} index, ${arch}: manifest and blob digests equal the upstream's`, async () => {
        const image = which === 'oci' ? ociIndex : dockerList;
        const child = image.children!.find((c) => c.platform?.architecture === arch)!;
        const got = await pull(imageRef(cache.url, `local/team/multi`, which), arch);
        expect(sha256(got.manifest)).toBe(child.digest);
        expect(got.manifest.equals(child.manifest)).toBe(true);
        expect(got.blobs.map((b) => b.name).sort()).toEqual(child.blobs.map((b) => b.digest).sort());
        for (const b of got.blobs) expect(b.actual).toBe(b.name);
      });
    }
  }

  it('serves the index itself byte-exact with its media type (skopeo inspect --raw)', async () => {
    const raw = assertSkopeoOk(await skopeoInspect(imageRef(cache.url, 'local/team/multi', 'oci'), { raw: true }));
    expect(Buffer.from(raw.stdout).equals(ociIndex.manifest)).toBe(true);
    const res = await fetch(`${cache.url}/v2/local/team/multi/manifests/docker`, { method: 'HEAD' });
    expect(res.headers.get('content-type')).toBe('application/vnd.docker.distribution.manifest.list.v2+json');
    expect(res.headers.get('docker-content-digest')).toBe(dockerList.digest);
    expect(res.headers.get('content-length')).toBe(String(dockerList.manifest.length));
  });

  it('pulls a single-platform Docker schema2 image by tag and by digest', async () => {
    const byTag = await pull(imageRef(cache.url, 'local/team/single', 'v1'));
    expect(sha256(byTag.manifest)).toBe(single.digest);
    const byDigest = await pull(imageRef(cache.url, 'local/team/single', single.digest));
    expect(byDigest.manifest.equals(single.manifest)).toBe(true);
    expect(byDigest.blobs.map((b) => b.name).sort()).toEqual(single.blobs.map((b) => b.digest).sort());
  });

  it('serves blob ranges from the cache: 206 with Content-Range, 416 when unsatisfiable', async () => {
    const layer = single.blobs.reduce((a, b) => (b.size > a.size ? b : a));
    const res = await fetch(`${cache.url}/v2/local/team/single/blobs/${layer.digest}`, { headers: { Range: 'bytes=100-199' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes 100-199/${layer.size}`);
    const part = Buffer.from(await res.arrayBuffer());
    const whole = Buffer.from(await (await fetch(`${cache.url}/v2/local/team/single/blobs/${layer.digest}`)).arrayBuffer());
    expect(sha256(whole)).toBe(layer.digest);
    expect(part.equals(whole.subarray(100, 200))).toBe(true);
    const bad = await fetch(`${cache.url}/v2/local/team/single/blobs/${layer.digest}`, { headers: { Range: `bytes=${layer.size + 10}-` } });
    expect(bad.status).toBe(416);
    expect(bad.headers.get('content-range')).toBe(`bytes */${layer.size}`);
  });

  it('lists tags through the cache', async () => {
    const res = await skopeoListTags(imageRef(cache.url, 'local/team/multi', 'oci').replace(/:oci$/, ''));
    expect(res.tags?.sort()).toEqual(['docker', 'oci']);
  });

  it('the second pull of every image makes zero upstream requests', async () => {
    // The first pulls above did go to the upstream: every blob once, never twice.
    const blobGets = proxy.requests.filter((r) => r.method === 'GET' && r.path.includes('/blobs/') && r.status === 200).map((r) => r.path);
    const distinct = new Set([...ociIndex.blobs, ...dockerList.blobs, ...single.blobs].map((b) => b.digest));
    expect(blobGets.length).toBe(distinct.size);
    expect(new Set(blobGets).size).toBe(blobGets.length);
    proxy.reset();
    for (const arch of ['amd64', 'arm64']) {
      await pull(imageRef(cache.url, 'local/team/multi', 'oci'), arch);
      await pull(imageRef(cache.url, 'local/team/multi', 'docker'), arch);
    }
    await pull(imageRef(cache.url, 'local/team/single', 'v1'));
    expect(proxy.requests).toEqual([]);
  });

  it('the cached images still pull with the upstream stopped; uncached ones get 503', async () => {
    await upstream.stop();
    const child = ociIndex.children!.find((c) => c.platform?.architecture === 'arm64')!;
    const got = await pull(imageRef(cache.url, 'local/team/multi', 'oci'), 'arm64');
    expect(sha256(got.manifest)).toBe(child.digest);
    for (const b of got.blobs) expect(b.actual).toBe(b.name);
    const bySingleDigest = await pull(imageRef(cache.url, 'local/team/single', single.digest));
    expect(bySingleDigest.manifest.equals(single.manifest)).toBe(true);
    const miss = await fetch(`${cache.url}/v2/local/team/never/manifests/v1`);
    expect(miss.status).toBe(503);
    expect(((await miss.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('UNAVAILABLE');
  });

  it('stops cleanly on SIGTERM', async () => {
    expect(await cache.stop()).toBe(0);
  });
});

describe('streaming a blob to the client while the cache fills it (real server, slow fake upstream)', () => {
  let fake: FakeUpstream;
  let server: LocalServer;
  const KiB = 1024;

  beforeAll(async () => {
    fake = await startFakeUpstream();
    server = await startLocalServer({ rules: [{ prefix: 'slow', upstream: fake.url }] });
  });
  afterAll(async () => {
    await server?.stop();
    await fake?.close();
  });

  const blobFile = (digest: string) => join(server.dataDir, 'blobs', 'sha256', digest.slice('sha256:'.length));
  const tmpFiles = () => readdirSync(join(server.dataDir, 'tmp'));

  /** Reads a response body chunk by chunk; notes when the first chunk came and whether the blob was committed then. */
  async function readBody(res: Response, digest: string) {
    const chunks: Buffer[] = [];
    let firstAt: number | undefined;
    let committedAtFirst: boolean | undefined;
    let error: unknown;
    try {
      for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
        if (firstAt === undefined) {
          firstAt = Date.now();
          committedAtFirst = existsSync(blobFile(digest));
        }
        chunks.push(Buffer.from(c));
      }
    } catch (err) {
      error = err;
    }
    return { bytes: Buffer.concat(chunks), firstAt, endAt: Date.now(), committedAtFirst, error };
  }

  it('serves the first bytes before the fill committed, then exactly the blob (200 with Content-Length)', async () => {
    const layer = randomBytes(1024 * KiB);
    const img = seedImage(fake, 'app', 'v1', [layer]);
    const digest = img.layerDigests[0];
    fake.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 50 }; // 16 pieces, ~800 ms
    fake.reset();
    const res = await fetch(`${server.url}/v2/slow/app/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(layer.length));
    expect(res.headers.get('docker-content-digest')).toBe(digest);
    const got = await readBody(res, digest);
    expect(got.error).toBeUndefined();
    expect(got.committedAtFirst).toBe(false);
    expect(got.endAt - got.firstAt!).toBeGreaterThan(300);
    expect(sha256(got.bytes)).toBe(digest);
    // The response ends once the bytes are verified, just before the store's fsync + rename: wait (bounded).
    for (let i = 0; i < 50 && !existsSync(blobFile(digest)); i++) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(blobFile(digest))).toBe(true);
    expect(fake.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('streams chunked when the upstream sends no Content-Length', async () => {
    const layer = randomBytes(300 * KiB + 11);
    const img = seedImage(fake, 'app', 'v2', [layer]);
    fake.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 30, noLength: true };
    const res = await fetch(`${server.url}/v2/slow/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBeNull();
    const got = await readBody(res, img.layerDigests[0]);
    expect(got.error).toBeUndefined();
    expect(got.bytes.equals(layer)).toBe(true);
  });

  it('concurrent clients each get the whole blob from one upstream GET', async () => {
    const layer = randomBytes(768 * KiB);
    const img = seedImage(fake, 'app', 'v3', [layer]);
    fake.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 30 };
    fake.reset();
    const bodies = await Promise.all(
      Array.from({ length: 5 }, async (_, i) => {
        await new Promise((r) => setTimeout(r, i * 60));
        const res = await fetch(`${server.url}/v2/slow/app/blobs/${img.layerDigests[0]}`);
        return readBody(res, img.layerDigests[0]);
      }),
    );
    for (const b of bodies) {
      expect(b.error).toBeUndefined();
      expect(b.bytes.equals(layer)).toBe(true);
    }
    expect(fake.count({ method: 'GET', kind: 'blob' })).toBe(1);
  });

  it('a Range request on a blob still filling waits for the commit, then gets 206', async () => {
    const layer = randomBytes(512 * KiB);
    const img = seedImage(fake, 'app', 'v4', [layer]);
    const digest = img.layerDigests[0];
    fake.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 50 };
    const redirect = await fetch(`${server.url}/v2/slow/app/blobs/${digest}`, { redirect: 'manual' });
    expect(redirect.status).toBe(307);
    const location = new URL(redirect.headers.get('location')!, server.url);
    expect(existsSync(blobFile(digest))).toBe(false);
    const ranged = await fetch(location, { headers: { Range: 'bytes=1000-1999' } });
    expect(existsSync(blobFile(digest))).toBe(true);
    expect(ranged.status).toBe(206);
    expect(ranged.headers.get('content-range')).toBe(`bytes 1000-1999/${layer.length}`);
    expect(Buffer.from(await ranged.arrayBuffer()).equals(layer.subarray(1000, 2000))).toBe(true);
  });

  it("wrong bytes upstream: the client's body breaks off short, nothing is committed, no temp file stays", async () => {
    const layer = randomBytes(512 * KiB);
    const img = seedImage(fake, 'app', 'v5', [layer]);
    const digest = img.layerDigests[0];
    fake.faults.slowBody = { chunkBytes: 64 * KiB, pauseMs: 20 };
    fake.faults.wrongBytes = true;
    try {
      const res = await fetch(`${server.url}/v2/slow/app/blobs/${digest}`);
      expect(res.status).toBe(200);
      const got = await readBody(res, digest);
      expect(got.error).toBeDefined();
      expect(got.bytes.length).toBeLessThan(layer.length);
      expect(existsSync(blobFile(digest))).toBe(false);
      const deadline = Date.now() + 5000;
      while (tmpFiles().length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(tmpFiles()).toEqual([]);
    } finally {
      fake.faults.wrongBytes = false;
    }
    // The next request fills again, with the right bytes.
    const again = await fetch(`${server.url}/v2/slow/app/blobs/${digest}`);
    expect(sha256(Buffer.from(await again.arrayBuffer()))).toBe(digest);
  });

  it('answers BLOB_UNKNOWN at once for a blob the upstream does not have', async () => {
    const t0 = Date.now();
    const res = await fetch(`${server.url}/v2/slow/app/blobs/sha256:${'5'.repeat(64)}`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(Date.now() - t0).toBeLessThan(3000);
  });
});
