/**
 * Real container clients pulling through the cache: podman (image name prefixed with the cache host and rule)
 * and containerd's `ctr` through a `hosts.toml` mirror (unprefixed name, `?ns=<registry host>`). The upstream is
 * Debian's docker-registry behind a counting proxy, holding a real OCI image index and a Docker manifest list
 * (linux/amd64 + linux/arm64). Each client gets its own cache server (same rule), so its first pull is a
 * real fill from the upstream and its second pull is provably served by the cache alone.
 */
import { readFileSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assertCtrOk,
  parseContentList,
  parseImagesList,
  SNAPSHOTTER,
  startContainerd,
  writeHostsToml,
  type Containerd,
} from '../support/containerd.js';
import { startCountingProxy, type CountingProxy, type ProxiedRequest } from '../support/counting-proxy.js';
import { pushMultiArchImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { createPodmanSandbox, type PodmanSandbox } from '../support/podman.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

let upstream: UpstreamRegistry;
let proxy: CountingProxy;
let images: Record<'oci' | 'docker', PushedImage>;
/** The upstream's host as clients name it: the proxy's `127.0.0.1:PORT` (the rule's upstream is the proxy). */
let upstreamHost: string;

/** Per client call (ms): a hung client fails its test with podman's/ctr's stderr well inside vitest's 180 s. */
const CALL_TIMEOUT_MS = 60_000;

const startCache = () => startLocalServer({ rules: [{ prefix: 'local', upstream: proxy.url }] });
const childOf = (image: PushedImage, arch: string) => image.children!.find((c) => c.platform?.architecture === arch)!;

/** One access-log line of the cache server (`message: "request"`). */
interface CacheRequest {
  method: string;
  path: string;
  query?: string;
  status: number;
  userAgent?: string;
}

/** Access-log lines the cache wrote after byte `from` of its log. */
function cacheRequests(cache: LocalServer, from = 0): CacheRequest[] {
  return readFileSync(cache.logPath)
    .subarray(from)
    .toString('utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as CacheRequest & { message: string })
    .filter((l) => l.message === 'request');
}
const logSize = (cache: LocalServer) => readFileSync(cache.logPath).length;

/** Polls `check` (every 50 ms, at most `ms`) until it stops throwing: the cache's log reaches the file through a pipe. */
async function eventually<T>(check: () => T, ms = 3000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Upstream requests a cold pull is allowed to make: GETs that succeeded, and no blob fetched twice. */
function expectOneFetchPerBlob(requests: ProxiedRequest[]): void {
  for (const r of requests) expect(r, JSON.stringify(r)).toMatchObject({ method: 'GET', status: 200 });
  const blobGets = requests.filter((r) => r.path.includes('/blobs/')).map((r) => r.path);
  expect(new Set(blobGets).size).toBe(blobGets.length);
}

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  images = {
    oci: await pushMultiArchImage(upstream.url, 'team/multi', 'oci', { format: 'oci' }),
    docker: await pushMultiArchImage(upstream.url, 'team/multi', 'docker', { format: 'docker' }),
  };
  proxy = await startCountingProxy(upstream.url);
  upstreamHost = new URL(proxy.url).host;
});

afterAll(async () => {
  await proxy?.stop();
  await upstream?.stop();
});

describe('podman pull through the cache (prefixed name, --tls-verify=false, vfs, isolated storage)', () => {
  let cache: LocalServer;
  const sandboxes: PodmanSandbox[] = [];
  const sandbox = () => {
    const s = createPodmanSandbox();
    sandboxes.push(s);
    return s;
  };

  beforeAll(async () => {
    cache = await startCache();
  });
  afterAll(async () => {
    for (const s of sandboxes) s.remove();
    await cache?.stop();
  });

  for (const which of ['oci', 'docker'] as const) {
    for (const arch of ['amd64', 'arm64'] as const) {
      it(`${which === 'oci' ? 'OCI image index' : 'Docker manifest list'}, --arch ${arch}: podman records the index digest and both repo digests; a second pull makes no upstream request`, async () => {
        const image = images[which];
        const child = childOf(image, arch);
        const configDigest = child.blobs[0].digest;
        const repo = `${cache.host}/local/team/multi`;
        const ref = `${repo}:${which}`;

        proxy.reset();
        const first = sandbox();
        const id = await first.pull(ref, { arch, timeoutMs: CALL_TIMEOUT_MS });
        expect(`sha256:${id}`).toBe(configDigest);
        const got = await first.inspect(id);
        // podman 4.3 (containers/image) reports the digest of what the tag names — the index / list — as the
        // image's Digest, and lists the index and the platform's manifest as RepoDigests.
        expect(got.Digest).toBe(image.digest);
        expect([...got.RepoDigests].sort()).toEqual([`${repo}@${image.digest}`, `${repo}@${child.digest}`].sort());
        expect(got.RepoTags).toEqual([ref]);
        expect(got.Architecture).toBe(arch);
        expect(got.RootFS.Layers).toHaveLength(child.blobs.length - 1);
        expectOneFetchPerBlob(proxy.requests);

        // Second pull, into empty storage (every blob is downloaded again) and into the same storage.
        proxy.reset();
        const second = sandbox();
        expect(await second.pull(ref, { arch, timeoutMs: CALL_TIMEOUT_MS })).toBe(id);
        expect((await second.inspect(id)).Digest).toBe(image.digest);
        expect(await first.pull(ref, { arch, timeoutMs: CALL_TIMEOUT_MS })).toBe(id);
        expect(proxy.requests).toEqual([]);
      });
    }
  }
});

describe('containerd ctr through a hosts.toml mirror (unprefixed name, ?ns=<registry host>)', () => {
  let cache: LocalServer;
  let containerd: Containerd;
  let hostsDir: string;

  beforeAll(async () => {
    cache = await startCache();
    containerd = await startContainerd();
    // The image reference names the upstream (the proxy); the cache is its mirror, consulted first. The rule's
    // upstream host equals the `ns` containerd sends (the reference's registry host, port included).
    hostsDir = writeHostsToml(upstreamHost, proxy.url, [{ url: cache.url, capabilities: ['pull', 'resolve'] }]);
  });
  afterAll(async () => {
    await containerd?.destroy();
    await cache?.stop();
    if (hostsDir) rmSync(hostsDir, { recursive: true, force: true });
  });

  /** Removes every image of the namespace, synchronously garbage-collecting content and snapshots; asserts nothing is left. */
  async function emptyContainerd(): Promise<void> {
    const refs = parseImagesList(assertCtrOk(await containerd.ctr(['images', 'ls'])).stdout).map((i) => i.ref);
    if (refs.length > 0) assertCtrOk(await containerd.ctr(['images', 'rm', '--sync', ...refs]));
    expect(parseContentList(assertCtrOk(await containerd.ctr(['content', 'ls'])).stdout)).toEqual([]);
  }

  const pull = async (ref: string, platform: string) =>
    assertCtrOk(
      await containerd.ctr(['images', 'pull', '--hosts-dir', hostsDir, '--platform', platform, '--snapshotter', SNAPSHOTTER, ref], {
        timeoutMs: CALL_TIMEOUT_MS,
      }),
    );

  /** Asserts the mirror answered every request containerd made for `child` with success, tagged `ns`. */
  async function expectServedByMirror(since: number, image: PushedImage, child: PushedImage): Promise<CacheRequest[]> {
    return eventually(() => {
      const all = cacheRequests(cache, since);
      const fromContainerd = all.filter((r) => r.userAgent?.startsWith('containerd/'));
      // Every /v2/ request carries ns=<registry host> and succeeded, so containerd never fell back to the server.
      for (const r of fromContainerd) {
        expect(r.path.startsWith('/v2/team/multi/'), r.path).toBe(true);
        expect(new URLSearchParams(r.query).get('ns'), r.path).toBe(upstreamHost);
        expect([200, 307], `${r.method} ${r.path} → ${r.status}`).toContain(r.status);
      }
      const paths = fromContainerd.map((r) => r.path);
      expect(paths).toContain(`/v2/team/multi/manifests/${image.tag}`);
      expect(paths).toContain(`/v2/team/multi/manifests/${image.digest}`);
      expect(paths).toContain(`/v2/team/multi/manifests/${child.digest}`);
      expect(paths.filter((p) => p.includes('/manifests/sha256:') && p !== `/v2/team/multi/manifests/${image.digest}` && p !== `/v2/team/multi/manifests/${child.digest}`)).toEqual([]);
      const blobGets = fromContainerd.filter((r) => r.path.includes('/blobs/')).map((r) => r.path.split('/').pop()!);
      expect(blobGets.sort()).toEqual(child.blobs.map((b) => b.digest).sort());
      // Each blob redirect was followed to the cache's own signed blob URL, which answered with the bytes (a
      // failure there would also send containerd to the next host: the upstream itself).
      const blobRoute = all.filter((r) => r.path.startsWith('/_blobs/'));
      for (const r of blobRoute) expect([200, 206], `${r.method} ${r.path} → ${r.status}`).toContain(r.status);
      for (const b of child.blobs) expect(blobRoute.some((r) => r.path.includes(b.digest.replace(':', '/'))), b.digest).toBe(true);
      return fromContainerd;
    });
  }

  /** Empties containerd, then pulls `team/multi:<which>` for linux/<arch> through the mirror (proxy reset first) and checks the mirror served it. */
  async function pullThroughMirror(which: keyof typeof images, arch: string) {
    const image = images[which];
    const child = childOf(image, arch);
    const ref = `${upstreamHost}/team/multi:${which}`;
    await emptyContainerd();
    proxy.reset();
    const since = logSize(cache);
    await pull(ref, `linux/${arch}`);
    await expectServedByMirror(since, image, child);
    return { image, child, ref };
  }

  for (const [which, arch] of [['oci', 'arm64'], ['docker', 'amd64']] as const) {
    const label = which === 'oci' ? 'OCI image index' : 'Docker manifest list';

    it(`${label}, linux/${arch}: the mirror serves the pull; the image target is the index; content holds the ${arch} manifest and its blobs`, async () => {
      const { image, child, ref } = await pullThroughMirror(which, arch);
      // The cache filled from the upstream once (without ns: the cache never forwards it).
      expect(proxy.requests.length).toBeGreaterThan(0);
      expectOneFetchPerBlob(proxy.requests);
      for (const r of proxy.requests) expect(r.path.includes('ns='), r.path).toBe(false);

      const listed = parseImagesList(assertCtrOk(await containerd.ctr(['images', 'ls'])).stdout);
      expect(listed.map((i) => [i.ref, i.type, i.digest])).toContainEqual([ref, image.mediaType, image.digest]);
      const content = parseContentList(assertCtrOk(await containerd.ctr(['content', 'ls'])).stdout).map((c) => c.digest);
      expect(content.sort()).toEqual([image.digest, child.digest, ...child.blobs.map((b) => b.digest)].sort());
      const other = childOf(image, arch === 'arm64' ? 'amd64' : 'arm64');
      expect(content).not.toContain(other.digest);
    });

    it(`${label}, linux/${arch}: pulled again after removing image and content, every byte comes from the cache (zero upstream requests)`, async () => {
      const { image, ref } = await pullThroughMirror(which, arch);
      expect(proxy.requests).toEqual([]);
      const listed = parseImagesList(assertCtrOk(await containerd.ctr(['images', 'ls'])).stdout);
      expect(listed.find((i) => i.ref === ref)?.digest).toBe(image.digest);
    });
  }
});
