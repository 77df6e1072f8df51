/**
 * The operator CLI against a running local server's store (issue 10): `npx pullthrough prefetch` of a multi-arch
 * image index from Debian's docker-registry into an empty cache while the server runs, a second prefetch that
 * fetches nothing, then the upstream stopped: skopeo pulls every platform through the server, byte-exact. Then
 * `npx pullthrough stats --json` reads the counters the CLI and the server wrote: the prefetch's upstream traffic,
 * the pulls as hits.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushMultiArchImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256 } from '../support/pull.js';
import { scratchDir } from '../support/scratch.js';
import { imageRef } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const ROOT = resolve(import.meta.dirname, '../..');
const run = promisify(execFile);

let upstream: UpstreamRegistry;
let cache: LocalServer;
let image: PushedImage;

/** Runs the CLI on the server's settings (config and data dir); resolves with its exit code and output. */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', ...args], {
      cwd: ROOT, timeout: 120_000,
      env: { ...process.env, PULLTHROUGH_CONFIG: join(dirname(cache.logPath), 'config.yaml'), PULLTHROUGH_DATA_DIR: cache.dataDir, PULLTHROUGH_LOG_LEVEL: 'WARN' },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  image = await pushMultiArchImage(upstream.url, 'team/multi', 'v1', { format: 'oci' });
  cache = await startLocalServer({ rules: [{ prefix: 'local', upstream: upstream.url }] });
});

afterAll(async () => {
  await cache?.stop();
  await upstream?.stop();
});

describe('prefetch, then the upstream stopped', () => {
  const childBytes = () => image.children!.reduce((a, c) => a + c.manifest.length, 0);
  const blobBytes = () => image.blobs.reduce((a, b) => a + b.size, 0);

  it('prefetch fills every platform of the index into the running server\'s store; again, it fetches nothing', async () => {
    const first = await cli(['prefetch', 'local/team/multi:v1']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toContain(`local/team/multi:v1: 2 platforms (linux/amd64, linux/arm64), ${image.blobs.length} blobs`);
    expect(first.stderr).toMatch(/local\/team\/multi:v1: done, 0 of \d+ blobs were cached/);
    expect(first.stdout).toMatch(/^prefetched 1 of 1 images, [\d.]+ (KiB|MiB) from upstreams\n$/);
    const list = join(scratchDir('prefetch-list-'), 'images.txt');
    writeFileSync(list, '# images of the rollout\nlocal/team/multi:v1   # the one above\n\n');
    const again = await cli(['prefetch', '--file', list, '--platform', 'linux/arm64']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('prefetched 1 of 1 images, 0 B from upstreams\n');
    const bad = await cli(['prefetch', 'local/team/multi']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('give a tag or a digest');
  });

  it('with the upstream stopped, skopeo pulls every platform byte-exact from the cache', async () => {
    await upstream.stop();
    for (const child of image.children!) {
      const got = await pullImage(imageRef(cache.url, 'local/team/multi', 'v1'), { arch: child.platform!.architecture });
      expect(sha256(got.manifest)).toBe(child.digest);
      expect(got.blobs.map((b) => b.name).sort()).toEqual(child.blobs.map((b) => b.digest).sort());
      for (const b of got.blobs) expect(b.actual).toBe(b.name);
    }
    const missing = await cli(['prefetch', 'local/team/never:v1']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('local/team/never:v1: failed:');
  });

  it('stats reads what the prefetch fetched and what the pulls were served', async () => {
    expect(await cache.stop()).toBe(0); // writes the server's counts
    const stats = await cli(['stats', '--json']);
    expect(stats.code, stats.stderr).toBe(0);
    const { rules } = JSON.parse(stats.stdout.trim().split('\n').at(-1)!) as { rules: Array<{ rule: string; sinceStart: Record<string, number>; lastDay: Record<string, number> }> };
    const local = rules.find((r) => r.rule === 'local')!;
    // The prefetch fetched the index, both image manifests and every blob once; the failed one got 503s.
    expect(local.sinceStart.upstreamBytes).toBe(image.manifest.length + childBytes() + blobBytes());
    // Two pulls: the index and an image manifest each, and their blobs; all hits.
    const pulled = image.children!.reduce((a, c) => a + 2 + c.blobs.length, 0);
    expect(local.sinceStart).toMatchObject({ requests: pulled, hits: pulled, misses: 0, hitRatio: 1 });
    expect(local.lastDay.requests).toBe(pulled);
  });
});
