/**
 * The lifecycle subcommands as operators run them: `npx pullthrough ls|purge|gc|verify` in their own processes
 * beside the running local server, on its data dir (SQLite WAL + files shared between processes); and a GC
 * killed half-way (SIGKILL) whose next run finishes the pass and leaves a consistent store.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import Database from 'better-sqlite3';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { formatBytes } from '../../bin/cli/format.js';
import { openFsBlobStore } from '../../shared/store/fs-blob-store.js';
import { openSqliteIndex } from '../../shared/store/sqlite-index.js';
import { trackChild } from '../support/child-processes.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { storeProblems } from '../support/lifecycle-checks.js';
import { scratchDir } from '../support/scratch.js';
import { Readable } from 'node:stream';

const ROOT = resolve(import.meta.dirname, '../..');
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

function cli(args: string[], env: Record<string, string>) {
  return spawnSync(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', ...args], {
    cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, PULLTHROUGH_LOG_LEVEL: 'WARN', ...env },
  });
}
const lastJson = (stdout: string) => JSON.parse(stdout.trim().split('\n').at(-1)!);

/** GETs a manifest and every blob through the server (following its 307s), checking each digest. */
async function pull(server: LocalServer, name: string, tag: string): Promise<void> {
  const res = await fetch(`${server.url}/v2/${name}/manifests/${tag}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
  expect(res.status).toBe(200);
  const m = JSON.parse(Buffer.from(await res.arrayBuffer()).toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  for (const d of [m.config.digest, ...m.layers.map((l) => l.digest)]) {
    const blob = await fetch(`${server.url}/v2/${name}/blobs/${d}`);
    expect(blob.status).toBe(200);
    expect(sha256(Buffer.from(await blob.arrayBuffer()))).toBe(d);
  }
}

describe('lifecycle subcommands beside the running server', () => {
  let up: FakeUpstream;
  let server: LocalServer;
  let env: Record<string, string>;
  beforeAll(async () => {
    up = await startFakeUpstream();
    const config = { rules: [{ prefix: 'local', upstream: up.url }] };
    server = await startLocalServer(config);
    const configPath = join(scratchDir('lifecycle-cli-'), 'config.yaml');
    await fs.writeFile(configPath, stringify(config));
    env = { PULLTHROUGH_CONFIG: configPath, PULLTHROUGH_DATA_DIR: server.dataDir };
  }, 60_000);
  afterAll(async () => {
    await server?.stop();
    await up?.close();
  });

  it('ls shows what a pull stored; purge removes it and the running server refills it from the upstream; gc and verify report', async () => {
    const img = seedImage(up, 'app', 'v1', [Buffer.alloc(40_000, 'a')]);
    seedImage(up, 'keep', 'v1', [Buffer.alloc(30_000, 'k')]);
    await pull(server, 'local/app', 'v1');
    await pull(server, 'local/keep', 'v1');

    const ls = cli(['ls', '--json'], env);
    expect(ls.status, ls.stderr).toBe(0);
    const listing = lastJson(ls.stdout) as { repositories: Array<{ name: string; storedBytes: number; tags: Array<{ tag: string; digest: string }>; manifests: Array<{ mediaType: string; storedBytes: number }> }> };
    const app = listing.repositories.find((r) => r.name === 'local/app')!;
    expect(listing.repositories.map((r) => r.name)).toEqual(['local/app', 'local/keep']);
    expect(app.tags.map((t) => [t.tag, t.digest])).toEqual([['v1', img.digest]]);
    expect(app.manifests[0].mediaType).toBe(img.mediaType);
    expect(app.storedBytes).toBe(img.body.length + img.config.length + 40_000);
    const table = cli(['ls', 'local/app'], env);
    expect(table.stdout).toMatch(/^REPOSITORY\s+TAG\s+DIGEST\s+MEDIA TYPE\s+STORED\s+LAST PULLED \(UTC\)\s+SIGNATURE\nlocal\/app\s+v1\s+sha256:\S+\s.*\s-\n/);

    const purged = cli(['purge', 'local/app:v1', '--json'], env);
    expect(purged.status, purged.stderr).toBe(0);
    expect(lastJson(purged.stdout)).toMatchObject({ target: 'local/app:v1', repositories: 1, evictedTags: 1, deletedManifests: 1, deletedBlobs: 2 });
    expect(cli(['purge', 'local/nothing'], env).status).toBe(1);
    expect(cli(['purge', 'local/app@sha256:123'], env).status).toBe(2);
    // The server answers from the store, not from memory: the purged image is a miss and comes from the upstream.
    up.reset();
    await pull(server, 'local/app', 'v1');
    expect(up.count({ method: 'GET', kind: 'manifest' })).toBe(1);
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(2);

    const gc = cli(['gc', '--json'], env);
    expect(gc.status, gc.stderr).toBe(0);
    const report = lastJson(gc.stdout);
    for (const key of ['evictedTags', 'deletedManifests', 'deletedBlobs', 'freedBytes', 'storedBytes', 'overBudget']) expect(report).toHaveProperty(key);
    expect(report).toMatchObject({ complete: true, evictedTags: 0, deletedBlobs: 0 });
    expect(report.storedBytes).toBe(app.storedBytes + listing.repositories[1].storedBytes);
    // A dry run speaks in the conditional throughout, with each count's own noun.
    const dry = cli(['gc', '--dry-run'], env);
    // (The purged image's bytes wait for the grace period.)
    expect(dry.stdout.split('\n').slice(0, 3)).toEqual([
      'would evict 0 tags, would delete 0 manifests and 0 blobs (0 B) [dry run]',
      `would remove 0 storage objects past the grace period; ${formatBytes(report.pendingBytes)} waiting for it`,
      'would remove 0 temp files of writes killed mid-way (0 B)',
    ]);

    const verify = cli(['verify', '--json'], env);
    expect(verify.status, verify.stderr).toBe(0);
    expect(lastJson(verify.stdout)).toMatchObject({ checkedBlobs: 4, checkedManifests: 2, damagedBlobs: [], damagedManifests: [] });

    // Damage found is a problem (exit 1) also when --repair dropped it; a clean store is 0 again.
    const layer = img.layerDigests[0] as Digest;
    await fs.writeFile((await openFsBlobStore(server.dataDir)).pathOf(layer), Buffer.alloc(40_000, 'x'));
    const found = cli(['verify'], env);
    expect(found.status).toBe(1);
    expect(found.stdout).toMatch(new RegExp(`^checked 4 blobs \\([\\d.]+ KiB\\) and 2 manifests\ndamaged blob ${layer}\n$`));
    const repaired = cli(['verify', '--repair'], env);
    expect([repaired.status, repaired.stdout.split('\n')[1]]).toEqual([1, `damaged blob ${layer} (dropped)`]);
    expect(cli(['verify'], env).status).toBe(0);

    // Counts take their noun's number.
    const purgedKeep = cli(['purge', 'local/keep:v1'], env);
    expect(purgedKeep.stdout).toMatch(/^purged local\/keep:v1: 1 tag, 1 manifest, 2 blobs \([\d.]+ KiB\) from 1 repository\n$/);
    expect(cli(['ls'], env).stdout).toMatch(/\n1 repository, [\d.]+ (B|KiB) stored/);
  }, 120_000);
});

describe('a GC killed half-way', () => {
  it('SIGKILL mid-sweep, then a rerun: the pass finishes, referenced blobs stay, the store is consistent', async () => {
    const dir = scratchDir('gc-crash-');
    const index = openSqliteIndex(join(dir, 'index.db'));
    const store = await openFsBlobStore(dir);
    const old = (Date.now() - 3 * 24 * 3600 * 1000) / 1000;
    // 40 manifests referencing 2 blobs each (kept), and 2,400 blobs nothing references (garbage), all days old.
    const kept: Digest[] = [];
    for (let i = 0; i < 40; i++) {
      const blobs = [Buffer.from(`kept ${i} a`), Buffer.from(`kept ${i} b`)];
      const body = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { digest: sha256(blobs[0]), size: blobs[0].length }, layers: [{ digest: sha256(blobs[1]), size: blobs[1].length }] }));
      await index.putManifest({ name: `local/img${i}`, digest: sha256(body), mediaType: 'application/vnd.oci.image.manifest.v1+json', size: body.length, body }, blobs.map(sha256), 'local');
      await index.putTag({ name: `local/img${i}`, tag: 'v1', digest: sha256(body), mediaType: 'application/vnd.oci.image.manifest.v1+json', size: body.length, fetchedAt: Date.now(), checkedAt: Date.now(), pulledAt: Date.now() });
      for (const b of blobs) {
        await store.write(sha256(b), Readable.from([b]));
        kept.push(sha256(b));
      }
    }
    const garbage: Digest[] = [];
    for (let i = 0; i < 2400; i++) {
      const b = Buffer.from(`garbage ${i}`);
      await store.write(sha256(b), Readable.from([b]));
      garbage.push(sha256(b));
    }
    for (const d of [...kept, ...garbage]) await fs.utimes(store.pathOf(d), old, old);
    await index.putLifecycleState('references', 'v1');

    const env = { ...process.env, PULLTHROUGH_DATA_DIR: dir, PULLTHROUGH_LOG_LEVEL: 'WARN' };
    const gc = trackChild(spawn(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', 'gc', '--json'], { cwd: ROOT, env, stdio: 'ignore' }));
    // Killed as soon as the pass saved its progress in the blob sweep (so it is half-way by construction).
    let state: string | undefined;
    for (let i = 0; i < 6000 && !state && gc.exit === undefined; i++) {
      state = await index.getLifecycleState('gc');
      if (!state || !state.includes('"phase":"blobs"') || !state.includes('"cursor":"sha256')) state = undefined;
      if (!state) await new Promise((r) => setTimeout(r, 10));
    }
    gc.child.kill('SIGKILL');
    await gc.exited;
    expect(state, 'the pass saved its place in the blob sweep before the kill').toBeDefined();
    const committedAfterKill = (await Promise.all(garbage.map((d) => store.stat(d)))).filter(Boolean).length;
    expect(committedAfterKill, 'part of the garbage is left for the rerun').toBeGreaterThan(0);
    expect(committedAfterKill).toBeLessThan(garbage.length);

    const rerun = () => spawnSync(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', 'gc', '--json'], { cwd: ROOT, env, encoding: 'utf8', timeout: 120_000 });
    const second = rerun();
    expect(second.status, second.stderr).toBe(0);
    expect(lastJson(second.stdout)).toMatchObject({ complete: true, evictedTags: 0, deletedManifests: 0 });
    expect(await index.getLifecycleState('gc')).toBeUndefined();
    for (const d of kept) expect(await store.stat(d), d).toBeDefined();
    expect(await storeProblems(index, store)).toEqual([]);
    // Left committed: only blobs whose lease the killed pass still held (at most its concurrency, 8); the next pass
    // after those leases expire (60 s; here removed, as expiry would) takes them.
    const db = new Database(join(dir, 'index.db'));
    const leftover = garbage.filter((d) => existsSync(store.pathOf(d)));
    const held = db.prepare("SELECT key FROM leases WHERE owner LIKE 'gc-%'").all() as Array<{ key: string }>;
    expect(leftover.length).toBeLessThanOrEqual(8);
    expect(held.map((l) => l.key).sort()).toEqual(expect.arrayContaining(leftover.map((d) => `blob:${d}`).sort()));
    db.prepare("DELETE FROM leases WHERE owner LIKE 'gc-%'").run();
    db.close();
    expect(rerun().status).toBe(0);
    // Now all garbage is unpublished, except a blob whose unpublish the kill cut between its two steps: it looks
    // freshly committed (its time was set first) and waits one grace period more — never the other way round.
    const states = await Promise.all(garbage.map((d) => store.storedBlob(d)));
    const waiting = states.filter((b) => b?.state === 'committed');
    expect(waiting.length).toBeLessThanOrEqual(8);
    for (const b of waiting) expect(b!.since).toBeGreaterThan(Date.now() - 3600_000);
    expect(states.filter((b) => b?.state === 'unpublished')).toHaveLength(garbage.length - waiting.length);
    expect(await storeProblems(index, store)).toEqual([]);
    index.close();
  }, 180_000);
});
