/**
 * A full disk, for real: the local server's data dir is a small tmpfs (8 MiB), mounted by the test (root and
 * CAP_SYS_ADMIN needed; without them the file is skipped, and test/unit/fill-limits.test.ts still covers the
 * same paths with an injected ENOSPC). A layer larger than the free space answers 503 UNAVAILABLE with
 * Retry-After before any byte is sent (no redirect, no cut body), logs `event: "fill-no-room"` (a WARN: the size is
 * the upstream's claim, so not the storage-full alarm), and client retries do not fetch it from the upstream again;
 * a manifest that no longer fits in SQLite answers 503, not 500, and logs `event: "storage-full"`.
 * Debian's docker-registry is the upstream, behind a counting proxy.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, openSync, readdirSync, readFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import { eventually } from '../support/eventually.js';
import { MediaTypes, pushBlob, pushManifest, sha256 } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { scratchDir } from '../support/scratch.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const mountPoint = join(scratchDir('full-disk-'), 'data');
mkdirSync(mountPoint, { recursive: true });
/** Mounts an 8 MiB tmpfs on the data dir; false when this machine does not let us. */
function mountTmpfs(): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mountPoint], { stdio: 'pipe' });
    return true;
  } catch (err) {
    console.info(`full-disk e2e skipped: cannot mount a tmpfs here (${(err as Error).message.split('\n')[0]})`);
    return false;
  }
}
const mounted = mountTmpfs();

let upstream: UpstreamRegistry;
let counting: CountingProxy;
let cache: LocalServer | undefined;

beforeAll(async () => {
  if (!mounted) return;
  upstream = await startUpstreamRegistry();
  counting = await startCountingProxy(upstream.url);
  cache = await startLocalServer(
    { rules: [{ prefix: 'local', upstream: counting.url, negativeCacheSeconds: 0 }], blobFill: { waitSeconds: 5, maxHops: 1 } },
    { dataDir: mountPoint },
  );
});

afterAll(async () => {
  await cache?.stop();
  await counting?.stop();
  await upstream?.stop();
  if (mounted) execFileSync('umount', [mountPoint], { stdio: 'pipe' });
});

// The server's log reaches its file through a pipe and a write stream, so a line may land just after the response:
// the tests wait (bounded) for it, then count.
const logEvents = (event: string) => readFileSync(cache!.logPath, 'utf8').split('\n').filter((l) => l.includes(`"event":"${event}"`));
const storageFull = () => logEvents('storage-full');
const blobGets = () => counting.requests.filter((r) => r.method === 'GET' && /\/blobs\/sha256:/.test(r.path)).length;

describe.skipIf(!mounted)('the data dir runs out of space (8 MiB tmpfs)', () => {
  it('a 12 MiB layer: 503 with Retry-After before any byte, a fill-no-room log line, and retries back off', async () => {
    const layer = randomBytes(12 * 1024 * 1024);
    const digest = sha256(layer);
    await pushBlob(upstream.url, 'big/app', { digest, size: layer.length, data: layer });
    for (let attempt = 0; attempt < 4; attempt++) {
      const res = await fetch(`${cache!.url}/v2/local/big/app/blobs/${digest}`, { redirect: 'manual' });
      expect(res.status).toBe(503);
      expect(res.headers.get('location')).toBeNull();
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('UNAVAILABLE');
    }
    expect(blobGets()).toBe(1); // the retries did not go to the upstream
    expect(readdirSync(join(mountPoint, 'tmp'))).toEqual([]);
    await eventually(() => logEvents('fill-no-room').length >= 1);
    const lines = logEvents('fill-no-room');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(digest);
    expect(lines[0]).toContain('"level":"WARN"');
    expect(storageFull()).toEqual([]);
  });

  it('a manifest when the disk is full to the last byte: 503 UNAVAILABLE, not 500 UNKNOWN', async () => {
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    await pushBlob(upstream.url, 'small/app', { digest: sha256(config), size: config.length, data: config });
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: sha256(config), size: config.length }, layers: [],
    }));
    await pushManifest(upstream.url, 'small/app', 'v1', MediaTypes.ociManifest, manifest);
    // Fill the file system.
    const fd = openSync(join(mountPoint, 'filler'), 'w');
    try {
      const chunk = Buffer.alloc(64 * 1024);
      for (let i = 0; i < 1000; i++) writeSync(fd, chunk);
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    } finally {
      closeSync(fd);
    }
    const res = await fetch(`${cache!.url}/v2/local/small/app/manifests/v1`, { headers: { accept: MediaTypes.ociManifest } });
    expect(res.status).toBe(503);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('UNAVAILABLE');
    expect(res.headers.get('retry-after')).toBe('30');
    await eventually(() => storageFull().length >= 1);
    const log = readFileSync(cache!.logPath, 'utf8');
    expect(storageFull()).toHaveLength(1);
    expect(log).not.toMatch(/unexpected error/);
  });
});
