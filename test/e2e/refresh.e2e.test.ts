/**
 * The refresh, end to end: Debian's docker-registry as the upstream behind a counting proxy, the real local
 * server, skopeo as the client, and the real `npm run refresh` CLI as a child process on the same embedded store
 * (same PULLTHROUGH_CONFIG and PULLTHROUGH_DATA_DIR: the SQLite index is shared by both processes).
 *
 * - A tag pushed anew upstream moves on refresh; the cache then serves the new digest without asking the
 *   upstream for the manifest, and the previous digest still pulls by digest. A tag that did not move costs
 *   exactly one upstream HEAD and no GET.
 * - The scheduled pass (no argument) re-checks only the tags that are due.
 * - The upstream stopped: a refresh counts errors and leaves every tag as it was; every cached tag and digest
 *   (a multi-arch index, its children, single images, superseded digests) still pulls with skopeo; what is not
 *   cached answers 503.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RefreshReport } from '../../shared/registry/refresh.js';
import { startCountingProxy, type CountingProxy, type ProxiedRequest } from '../support/counting-proxy.js';
import { pushManifest, pushMultiArchImage, pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256 } from '../support/pull.js';
import { scratchDir } from '../support/scratch.js';
import { assertSkopeoOk, imageRef, skopeoInspect } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const ROOT = resolve(import.meta.dirname, '../..');

let upstream: UpstreamRegistry;
let proxy: CountingProxy;
let cache: LocalServer;
/** The environment the server runs with, and so the refresh CLI. */
let storeEnv: { PULLTHROUGH_CONFIG: string; PULLTHROUGH_DATA_DIR: string };

/** `team/app` images: latest A → B (new upstream push), stable S (never moves), edge C → S (promoted). */
let imgA: PushedImage;
let imgB: PushedImage;
let imgS: PushedImage;
let imgC: PushedImage;
/** `team/tool`: nightly (due after 1 s) N1 → N2, and release (TTL 1 h) R. */
let nightly1: PushedImage;
let nightly2: PushedImage;
let release: PushedImage;
/** `team/multi:v1`, an OCI image index (amd64 + arm64). */
let multi: PushedImage;

const CONFIG = {
  rules: [
    {
      prefix: 'local',
      upstream: '', // set in beforeAll (the proxy's URL)
      ttlSeconds: 3600,
      frequentTags: { pattern: '^nightly$', ttlSeconds: 1 },
      upstreamTimeoutSeconds: 3,
      revalidateTimeoutSeconds: 1,
    },
  ],
  refresh: { rateLimitRetries: 0 },
};

/**
 * Runs `npm run refresh -- [arg]` (bounded: the process group is killed after 60 s) with the server's store and
 * config; returns the exit code and the JSON report it printed (the line with the counts; log lines are JSON too).
 */
function runRefresh(arg?: string): Promise<{ code: number | null; report: RefreshReport; stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('npm', ['run', '--silent', 'refresh', '--', ...(arg ? [arg] : [])], {
      cwd: ROOT,
      env: { ...process.env, ...storeEnv, PULLTHROUGH_LOG_LEVEL: 'WARN' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group: npm → sh → node, all killed together on timeout
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      const report = stdout
        .split('\n')
        .map((l) => {
          try {
            return JSON.parse(l) as unknown;
          } catch {
            return undefined;
          }
        })
        .find((v): v is RefreshReport => !!v && typeof v === 'object' && 'checked' in v && 'moved' in v && !('level' in v));
      if (!report) return reject(new Error(`npm run refresh ${arg ?? ''} printed no report (exit ${code}):\n${stdout}\n${stderr}`));
      resolvePromise({ code, report, stdout, stderr });
    });
  });
}

/** Pulls `ref` with skopeo into a new dir; returns the manifest bytes and every blob file's name and bytes digest. */
const pull = (ref: string, opts: { arch?: string; all?: boolean } = {}) => pullImage(ref, { ...opts, dirPrefix: 'refresh-pull-' });

/** Pulls an image and checks manifest bytes and every blob against the pushed image. */
async function expectPulls(ref: string, img: PushedImage, arch?: string) {
  const got = await pull(ref, { arch });
  expect(sha256(got.manifest)).toBe(img.digest);
  expect(got.manifest.equals(img.manifest)).toBe(true);
  expect(got.blobs.map((b) => b.name).sort()).toEqual(img.blobs.map((b) => b.digest).sort());
  for (const b of got.blobs) expect(b.actual).toBe(b.name);
}

/** The digest the cache answers for a tag (HEAD). */
async function servedDigest(name: string, tag: string): Promise<string | null> {
  const res = await fetch(`${cache.url}/v2/${name}/manifests/${tag}`, { method: 'HEAD' });
  expect(res.status).toBe(200);
  return res.headers.get('docker-content-digest');
}

/** `METHOD path` of every recorded upstream request, sorted. */
const seen = (reqs: ProxiedRequest[]) => reqs.map((r) => `${r.method} ${r.path}`).sort();

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  const push = (name: string, tag: string, layerSources: string[], format: 'oci' | 'docker' = 'docker') =>
    pushSinglePlatformImage(upstream.url, name, tag, { format, arch: 'amd64', layerSources });
  imgA = await push('team/app', 'latest', ['/usr/share/common-licenses']);
  imgS = await push('team/app', 'stable', ['/usr/share/doc/libc6']);
  imgC = await push('team/app', 'edge', ['/usr/share/doc/skopeo'], 'oci');
  nightly1 = await push('team/tool', 'nightly', ['/usr/share/doc/docker-registry']);
  release = await push('team/tool', 'release', ['/usr/share/doc/libc6', '/usr/share/doc/skopeo']);
  multi = await pushMultiArchImage(upstream.url, 'team/multi', 'v1', { format: 'oci' });
  proxy = await startCountingProxy(upstream.url);

  const dir = scratchDir('refresh-e2e-');
  const config = { ...CONFIG, rules: [{ ...CONFIG.rules[0], upstream: proxy.url }] };
  storeEnv = { PULLTHROUGH_CONFIG: join(dir, 'config.yaml'), PULLTHROUGH_DATA_DIR: join(dir, 'data') };
  writeFileSync(storeEnv.PULLTHROUGH_CONFIG, stringify(config));
  cache = await startLocalServer(config, { dataDir: storeEnv.PULLTHROUGH_DATA_DIR, env: storeEnv });
});

afterAll(async () => {
  await cache?.stop();
  await proxy?.stop();
  await upstream?.stop();
});

describe('npm run refresh against a real upstream', () => {
  it('a tag pushed anew moves; an unmoved tag costs one HEAD and no GET; the previous digest still pulls', async () => {
    await expectPulls(imageRef(cache.url, 'local/team/app', 'latest'), imgA);
    await expectPulls(imageRef(cache.url, 'local/team/app', 'stable'), imgS);
    await expectPulls(imageRef(cache.url, 'local/team/app', 'edge'), imgC);

    // Upstream: a new image under latest (it shares A's base layer), and edge promoted to stable's image.
    imgB = await pushSinglePlatformImage(upstream.url, 'team/app', 'latest', {
      format: 'docker',
      arch: 'amd64',
      layerSources: ['/usr/share/common-licenses', '/usr/share/doc/coreutils'],
    });
    expect(imgB.digest).not.toBe(imgA.digest);
    await pushManifest(upstream.url, 'team/app', 'edge', imgS.mediaType, imgS.manifest);
    // Before the refresh the cache still serves what it has (TTL 1 h), asking nobody.
    proxy.reset();
    expect(await servedDigest('local/team/app', 'latest')).toBe(imgA.digest);
    expect(proxy.requests).toEqual([]);

    const run = await runRefresh('local/team/app');
    expect(run.code).toBe(0);
    expect(run.report).toMatchObject({ checked: 3, moved: 2, unchanged: 1, gone: 0, errors: 0, stoppedEarly: false });
    // Locally a move is counted for Prometheus (tag checks, result moved), never printed as a CloudWatch EMF line:
    // stdout is the report alone (log lines at WARN: none here).
    expect(run.stdout).not.toContain('"_aws"');
    expect(run.stdout).toBe(`${JSON.stringify(run.report)}\n`);
    // One HEAD per tag. Only the tag that moved to a digest the cache lacks costs a GET (by digest, not by tag);
    // edge moved to a digest already cached (stable's), so it costs its HEAD alone. No blob is fetched.
    expect(seen(proxy.requests)).toEqual(
      [
        'HEAD /v2/team/app/manifests/latest',
        'HEAD /v2/team/app/manifests/stable',
        'HEAD /v2/team/app/manifests/edge',
        `GET /v2/team/app/manifests/${imgB.digest}`,
      ].sort(),
    );
    expect(proxy.requests.every((r) => r.status === 200)).toBe(true);
    const stableReqs = proxy.requests.filter((r) => r.path === '/v2/team/app/manifests/stable');
    expect({ head: stableReqs.filter((r) => r.method === 'HEAD').length, get: stableReqs.filter((r) => r.method === 'GET').length }).toEqual({ head: 1, get: 0 });

    // The cache now serves the new digests, the manifests with zero upstream requests.
    proxy.reset();
    expect(await servedDigest('local/team/app', 'latest')).toBe(imgB.digest);
    expect(await servedDigest('local/team/app', 'edge')).toBe(imgS.digest);
    const raw = assertSkopeoOk(await skopeoInspect(imageRef(cache.url, 'local/team/app', 'latest'), { raw: true }));
    expect(Buffer.from(raw.stdout).equals(imgB.manifest)).toBe(true);
    expect(proxy.requests).toEqual([]);
    // Pulling latest fetches only the new image's blobs the cache lacks (its config and new layer), once each.
    await expectPulls(imageRef(cache.url, 'local/team/app', 'latest'), imgB);
    const newBlobs = imgB.blobs.map((b) => b.digest).filter((d) => !imgA.blobs.some((a) => a.digest === d));
    expect(newBlobs).toHaveLength(2);
    expect(seen(proxy.requests)).toEqual(newBlobs.map((d) => `GET /v2/team/app/blobs/${d}`).sort());
    // Every later pull, and the superseded digests by digest, come from the cache alone.
    proxy.reset();
    await expectPulls(imageRef(cache.url, 'local/team/app', 'latest'), imgB);
    await expectPulls(imageRef(cache.url, 'local/team/app', 'edge'), imgS);
    await expectPulls(imageRef(cache.url, 'local/team/app', imgA.digest), imgA);
    await expectPulls(imageRef(cache.url, 'local/team/app', imgC.digest), imgC);
    expect(proxy.requests).toEqual([]);

    // A second refresh finds nothing moved: exactly one HEAD per tag, zero GETs.
    const again = await runRefresh('local/team/app');
    expect(again.code).toBe(0);
    expect(again.report).toMatchObject({ checked: 3, moved: 0, unchanged: 3, gone: 0, errors: 0 });
    expect(seen(proxy.requests)).toEqual(['HEAD /v2/team/app/manifests/edge', 'HEAD /v2/team/app/manifests/latest', 'HEAD /v2/team/app/manifests/stable']);

    // One tag: `<name>:<tag>`.
    proxy.reset();
    const one = await runRefresh('local/team/app:stable');
    expect(one.report).toMatchObject({ checked: 1, unchanged: 1, moved: 0, errors: 0 });
    expect(seen(proxy.requests)).toEqual(['HEAD /v2/team/app/manifests/stable']);
  });

  it('the scheduled pass (no argument) re-checks only the tags that are due', async () => {
    await expectPulls(imageRef(cache.url, 'local/team/tool', 'nightly'), nightly1);
    await expectPulls(imageRef(cache.url, 'local/team/tool', 'release'), release);
    nightly2 = await pushSinglePlatformImage(upstream.url, 'team/tool', 'nightly', {
      format: 'docker',
      arch: 'amd64',
      layerSources: ['/usr/share/doc/docker-registry', '/usr/share/doc/libc6'],
    });
    await new Promise((r) => setTimeout(r, 1200)); // nightly's TTL (1 s) passes; every other tag's is 1 h
    proxy.reset();
    const run = await runRefresh();
    expect(run.code).toBe(0);
    expect(run.report).toMatchObject({ checked: 1, moved: 1, unchanged: 0, errors: 0, stoppedEarly: false });
    expect(seen(proxy.requests)).toEqual([`GET /v2/team/tool/manifests/${nightly2.digest}`, 'HEAD /v2/team/tool/manifests/nightly']);
    expect(await servedDigest('local/team/tool', 'release')).toBe(release.digest);
    await expectPulls(imageRef(cache.url, 'local/team/tool', 'nightly'), nightly2);
    await expectPulls(imageRef(cache.url, 'local/team/tool', nightly1.digest), nightly1);
  });
});

describe('the upstream stopped', () => {
  const arches = ['amd64', 'arm64'] as const;

  it('a refresh counts errors and changes no tag; every cached tag and digest still pulls; uncached ones get 503', async () => {
    // Cache the multi-arch image whole: the index and both platforms, by tag.
    const all = await pull(imageRef(cache.url, 'local/team/multi', 'v1'), { all: true });
    expect(all.manifest.equals(multi.manifest)).toBe(true);
    expect(all.children.sort()).toEqual(multi.children!.map((c) => c.digest).sort());
    for (const b of all.blobs) expect(b.actual).toBe(b.name);
    const before = {
      'team/app:latest': imgB.digest,
      'team/app:stable': imgS.digest,
      'team/app:edge': imgS.digest,
      'team/tool:release': release.digest,
      'team/multi:v1': multi.digest,
    };
    for (const [ref, digest] of Object.entries(before)) expect(await servedDigest(`local/${ref.split(':')[0]}`, ref.split(':')[1])).toBe(digest);

    await upstream.stop();
    proxy.reset();

    // A forced refresh of one repository, then of the whole rule: one failed HEAD per tag, all counted as errors.
    const one = await runRefresh('local/team/multi');
    expect(one.code).toBe(1);
    expect(one.report).toMatchObject({ checked: 1, errors: 1, unchanged: 0, moved: 0, gone: 0 });
    expect(proxy.requests.map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual(['HEAD /v2/team/multi/manifests/v1 502']);
    proxy.reset();
    const everything = await runRefresh('local');
    expect(everything.code).toBe(1);
    expect(everything.report).toMatchObject({ checked: 6, errors: 6, unchanged: 0, moved: 0, gone: 0 });
    expect(proxy.requests.every((r) => r.method === 'HEAD' && r.status === 502)).toBe(true);
    expect(proxy.requests).toHaveLength(6);

    // Tags unchanged, and everything cached pulls: tags (both platforms of the index), the index and its
    // children by digest, superseded digests.
    for (const [ref, digest] of Object.entries(before)) expect(await servedDigest(`local/${ref.split(':')[0]}`, ref.split(':')[1])).toBe(digest);
    for (const arch of arches) {
      const child = multi.children!.find((c) => c.platform?.architecture === arch)!;
      await expectPulls(imageRef(cache.url, 'local/team/multi', 'v1'), child, arch);
      await expectPulls(imageRef(cache.url, 'local/team/multi', child.digest), child);
    }
    const byIndexDigest = await pull(imageRef(cache.url, 'local/team/multi', multi.digest), { all: true });
    expect(byIndexDigest.manifest.equals(multi.manifest)).toBe(true);
    expect(byIndexDigest.children.sort()).toEqual(multi.children!.map((c) => c.digest).sort());
    await expectPulls(imageRef(cache.url, 'local/team/app', 'latest'), imgB);
    await expectPulls(imageRef(cache.url, 'local/team/app', 'stable'), imgS);
    await expectPulls(imageRef(cache.url, 'local/team/app', 'edge'), imgS);
    await expectPulls(imageRef(cache.url, 'local/team/app', imgA.digest), imgA);
    await expectPulls(imageRef(cache.url, 'local/team/app', imgC.digest), imgC);
    await expectPulls(imageRef(cache.url, 'local/team/tool', 'release'), release);
    // nightly is stale (TTL 1 s): its re-check fails and the cached manifest is served.
    await expectPulls(imageRef(cache.url, 'local/team/tool', 'nightly'), nightly2);

    // Not cached: 503 UNAVAILABLE (not 404) for a tag, a manifest digest and a blob.
    const uncached = [
      `/v2/local/team/multi/manifests/v2`,
      `/v2/local/team/other/manifests/latest`,
      `/v2/local/team/app/manifests/sha256:${'1'.repeat(64)}`,
      `/v2/local/team/app/blobs/sha256:${'2'.repeat(64)}`,
    ];
    for (const path of uncached) {
      const res = await fetch(`${cache.url}${path}`, { redirect: 'manual' });
      expect(`${res.status} ${path}`).toBe(`503 ${path}`);
      expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('UNAVAILABLE');
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    }
    const inspect = await skopeoInspect(imageRef(cache.url, 'local/team/other', 'latest'), { raw: true, timeoutMs: 60_000 });
    expect(inspect.code).not.toBe(0);
    expect(inspect.stderr).toMatch(/503|unavailable/i);
  });
});
