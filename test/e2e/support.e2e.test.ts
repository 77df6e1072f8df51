/**
 * Self-test of the real-upstream test support: a real distribution registry,
 * real images pushed over the registry API, pulled back by real skopeo
 * directly from the upstream (no cache involved), and the counting proxy.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import {
  MediaTypes,
  pushMultiArchImage,
  pushSinglePlatformImage,
  type PushedImage,
} from '../support/images.js';
import { assertSkopeoOk, imageRef, skopeoCopy, skopeoInspect, skopeoListTags } from '../support/skopeo.js';
import {
  pickFreePort,
  startUpstreamRegistry,
  TEST_HTPASSWD,
  TEST_REGISTRY_PASSWORD,
  TEST_REGISTRY_USER,
  type UpstreamRegistry,
} from '../support/upstream-registry.js';

const T = 60_000;
const hex = (d: string) => d.replace(/^sha256:/, '');
const sha = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

let upstream: UpstreamRegistry;
let ociIndex: PushedImage;
let dockerList: PushedImage;
let single: PushedImage;
const tmpDirs: string[] = [];
const proxies: CountingProxy[] = [];
const registries: UpstreamRegistry[] = [];

function newDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'pullthrough-skopeo-dest-'));
  tmpDirs.push(d);
  return d;
}

/** Asserts a `dir:` copy holds exactly `img`'s manifest bytes and blobs, each blob file hashing to its name. */
function expectDirHoldsImage(dir: string, img: PushedImage): void {
  const manifest = readFileSync(join(dir, 'manifest.json'));
  expect(sha(manifest)).toBe(img.digest);
  expect(manifest.equals(img.manifest)).toBe(true);
  const blobFiles = readdirSync(dir).filter((f) => /^[0-9a-f]{64}$/.test(f));
  expect(new Set(blobFiles)).toEqual(new Set(img.blobs.map((b) => hex(b.digest))));
  for (const f of blobFiles) {
    const data = readFileSync(join(dir, f));
    expect(sha(data)).toBe(`sha256:${f}`);
    expect(data.length).toBe(img.blobs.find((b) => hex(b.digest) === f)!.size);
  }
}

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  [ociIndex, dockerList, single] = await Promise.all([
    pushMultiArchImage(upstream.url, 'library/multi-oci', 'v1', { format: 'oci' }),
    pushMultiArchImage(upstream.url, 'library/multi-docker', 'v1', { format: 'docker' }),
    pushSinglePlatformImage(upstream.url, 'team/app/single', '1.0', {
      format: 'oci',
      arch: 'amd64',
      layerSources: ['/usr/share/common-licenses', '/usr/share/zoneinfo/Europe'].filter((p) => {
        try {
          readdirSync(p);
          return true;
        } catch {
          return false;
        }
      }),
    }),
  ]);
}, T);

afterAll(async () => {
  for (const p of proxies) await p.stop();
  for (const r of registries) await r.stop();
  await upstream?.stop();
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
  if (upstream) rmSync(upstream.dataDir, { recursive: true, force: true });
}, T);

describe('pushed images', () => {
  it('have the advertised shapes', () => {
    expect(ociIndex.mediaType).toBe(MediaTypes.ociIndex);
    expect(dockerList.mediaType).toBe(MediaTypes.dockerList);
    expect(single.mediaType).toBe(MediaTypes.ociManifest);
    for (const [list, childType, layerType] of [
      [ociIndex, MediaTypes.ociManifest, MediaTypes.ociLayerGzip],
      [dockerList, MediaTypes.dockerManifest, MediaTypes.dockerLayerGzip],
    ] as const) {
      expect(list.children!.map((c) => c.platform)).toEqual([
        { architecture: 'amd64', os: 'linux' },
        { architecture: 'arm64', os: 'linux' },
      ]);
      const [amd, arm] = list.children!;
      expect(amd.mediaType).toBe(childType);
      const layersOf = (c: PushedImage) =>
        (JSON.parse(c.manifest.toString()) as { layers: Array<{ digest: string; mediaType: string }> }).layers;
      for (const l of [...layersOf(amd), ...layersOf(arm)]) expect(l.mediaType).toBe(layerType);
      const a = new Set(layersOf(amd).map((l) => l.digest));
      const b = new Set(layersOf(arm).map((l) => l.digest));
      expect([...a].some((d) => b.has(d))).toBe(true); // share a layer
      expect([...a].some((d) => !b.has(d))).toBe(true); // and differ in one
    }
    const total = ociIndex.blobs.reduce((s, b) => s + b.size, 0);
    expect(total).toBeLessThan(8 * 1024 * 1024);
  });
});

describe('skopeo pulls directly from the upstream', () => {
  for (const which of ['oci index', 'docker manifest list'] as const) {
    for (const arch of ['amd64', 'arm64'] as const) {
      it(
        `${which} ${arch}`,
        async () => {
          const list = which === 'oci index' ? ociIndex : dockerList;
          const child = list.children!.find((c) => c.platform!.architecture === arch)!;
          const dir = newDir();
          assertSkopeoOk(await skopeoCopy(imageRef(upstream.url, list.name, list.tag), dir, { arch }));
          expectDirHoldsImage(dir, child);
        },
        T,
      );
    }
  }

  it(
    'oci index with --all keeps the index bytes and every child',
    async () => {
      const dir = newDir();
      assertSkopeoOk(await skopeoCopy(imageRef(upstream.url, ociIndex.name, ociIndex.tag), dir, { all: true }));
      const top = readFileSync(join(dir, 'manifest.json'));
      expect(sha(top)).toBe(ociIndex.digest);
      for (const c of ociIndex.children!) {
        const m = readFileSync(join(dir, `${hex(c.digest)}.manifest.json`));
        expect(sha(m)).toBe(c.digest);
      }
      for (const b of ociIndex.blobs) expect(sha(readFileSync(join(dir, hex(b.digest))))).toBe(b.digest);
    },
    T,
  );

  it(
    'single-platform image, by tag and by digest',
    async () => {
      const dir = newDir();
      assertSkopeoOk(await skopeoCopy(imageRef(upstream.url, single.name, single.tag), dir));
      expectDirHoldsImage(dir, single);
      const dir2 = newDir();
      assertSkopeoOk(await skopeoCopy(imageRef(upstream.url, single.name, single.digest), dir2));
      expectDirHoldsImage(dir2, single);
    },
    T,
  );

  it(
    'inspect --raw returns the exact bytes; list-tags lists the tag',
    async () => {
      const raw = assertSkopeoOk(await skopeoInspect(imageRef(upstream.url, dockerList.name, 'v1'), { raw: true }));
      expect(raw.stdout).toBe(dockerList.manifest.toString('utf8')); // byte-exact, no trailing newline
      const summary = assertSkopeoOk(await skopeoInspect(imageRef(upstream.url, dockerList.name, 'v1'), { arch: 'arm64' }));
      expect(JSON.parse(summary.stdout).Architecture).toBe('arm64');
      const tags = await skopeoListTags(`${upstream.url}/${single.name}`);
      assertSkopeoOk(tags);
      expect(tags.tags).toEqual(['1.0']);
    },
    T,
  );
});

describe('counting proxy', () => {
  it(
    'counts what skopeo asks the upstream for',
    async () => {
      const proxy = await startCountingProxy(upstream.url);
      proxies.push(proxy);
      const child = ociIndex.children!.find((c) => c.platform!.architecture === 'arm64')!;
      const dir = newDir();
      assertSkopeoOk(await skopeoCopy(imageRef(proxy.url, ociIndex.name, 'v1'), dir, { arch: 'arm64' }));
      expectDirHoldsImage(dir, child);
      const blobGets = proxy.count((r) => r.method === 'GET' && r.path.includes('/blobs/sha256:'));
      expect(blobGets).toBe(child.blobs.length);
      expect(proxy.count((r) => r.path.includes('/manifests/'))).toBeGreaterThanOrEqual(2); // index + child
      expect(proxy.count((r) => r.status >= 400)).toBe(0);
      proxy.reset();
      expect(proxy.count()).toBe(0);
      // A HEAD and a ranged GET pass through with the registry's headers intact.
      const head = await fetch(`${proxy.url}/v2/${single.name}/manifests/1.0`, {
        method: 'HEAD',
        headers: { accept: MediaTypes.ociManifest },
      });
      expect(head.status).toBe(200);
      expect(head.headers.get('docker-content-digest')).toBe(single.digest);
      const blob = single.blobs[1];
      const ranged = await fetch(`${proxy.url}/v2/${single.name}/blobs/${blob.digest}`, { headers: { range: 'bytes=0-9' } });
      expect(ranged.status).toBe(206);
      expect((await ranged.arrayBuffer()).byteLength).toBe(10);
      expect(proxy.requests).toEqual([
        { method: 'HEAD', path: `/v2/${single.name}/manifests/1.0`, status: 200 },
        { method: 'GET', path: `/v2/${single.name}/blobs/${blob.digest}`, status: 206 },
      ]);
    },
    T,
  );

  it(
    'answers 502 when the target is down',
    async () => {
      const dead = await pickFreePort();
      const proxy = await startCountingProxy(`http://127.0.0.1:${dead}`);
      proxies.push(proxy);
      const r = await fetch(`${proxy.url}/v2/`);
      expect(r.status).toBe(502);
      expect(proxy.requests).toEqual([{ method: 'GET', path: '/v2/', status: 502 }]);
    },
    T,
  );
});

describe('upstream lifecycle', () => {
  it(
    'stops, then restarts on the same port and data with the images intact',
    async () => {
      const r = await startUpstreamRegistry();
      registries.push(r);
      const img = await pushSinglePlatformImage(r.url, 'x/y', 't', {
        format: 'docker',
        arch: 'arm64',
        layerSources: ['/usr/share/common-licenses'],
      });
      const proxy = await startCountingProxy(r.url);
      proxies.push(proxy);
      await r.stop();
      expect((await fetch(`${proxy.url}/v2/`)).status).toBe(502);
      const r2 = await startUpstreamRegistry({ port: r.port, dataDir: r.dataDir });
      registries.push(r2);
      expect(r2.url).toBe(r.url);
      const m = await fetch(`${proxy.url}/v2/x/y/manifests/t`, { headers: { accept: MediaTypes.dockerManifest } });
      expect(m.status).toBe(200);
      expect(sha(Buffer.from(await m.arrayBuffer()))).toBe(img.digest);
    },
    T,
  );

  it(
    'htpasswd: 401 without creds, pushes and skopeo pulls with creds',
    async () => {
      const r = await startUpstreamRegistry({ htpasswd: TEST_HTPASSWD });
      registries.push(r);
      const creds = `${TEST_REGISTRY_USER}:${TEST_REGISTRY_PASSWORD}`;
      const anon = await fetch(`${r.url}/v2/`);
      expect(anon.status).toBe(401);
      expect(anon.headers.get('www-authenticate')).toMatch(/^Basic realm=/);
      const img = await pushSinglePlatformImage(r.url, 'private/img', 'v1', {
        format: 'oci',
        arch: 'amd64',
        layerSources: ['/usr/share/common-licenses'],
        creds,
      });
      const denied = await skopeoCopy(imageRef(r.url, img.name, 'v1'), newDir());
      expect(denied.code).not.toBe(0);
      const dir = newDir();
      assertSkopeoOk(await skopeoCopy(imageRef(r.url, img.name, 'v1'), dir, { creds }));
      expectDirHoldsImage(dir, img);
    },
    T,
  );
});
