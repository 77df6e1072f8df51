/**
 * The signature policy end to end (issue 13): Debian's docker-registry as the upstream (behind a counting proxy),
 * cosign signatures built here (a key generated in the test, cosign's simple-signing payload, its signature in the
 * `dev.cosignproject.cosign/signature` annotation, the manifest pushed under cosign's `sha256-<hex>.sig` tag), the
 * real local server with one rule in mode enforce and one in mode warn (the key read from a file next to the
 * config), skopeo as the client, and the real refresh CLI on the same store.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cosignSignatureManifest, generateSigningKey, pushArtifact, signatureLayer, signatureTag, type SigningKey,
} from '../support/cosign-signatures.js';
import { runCommand } from '../support/child-processes.js';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import { pushMultiArchImage, pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256 } from '../support/pull.js';
import { scratchDir } from '../support/scratch.js';
import { imageRef, skopeoCopy } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const ROOT = resolve(import.meta.dirname, '../..');

let upstream: UpstreamRegistry;
let proxy: CountingProxy;
let cache: LocalServer;
let storeEnv: { PULLTHROUGH_CONFIG: string; PULLTHROUGH_DATA_DIR: string };
let trusted: SigningKey;
const images: Record<string, PushedImage> = {};

const push = (name: string, tag: string, salt: string) =>
  pushSinglePlatformImage(upstream.url, name, tag, { format: 'oci', arch: 'amd64', layerSources: ['/usr/share/doc/libc6'], salt });
const sign = (name: string, digest: string, key: SigningKey, signedDigest = digest) =>
  pushArtifact(upstream.url, name, cosignSignatureManifest([signatureLayer(key, signedDigest)]), signatureTag(digest));

/** skopeo copy of `name:ref` through the cache; returns skopeo's result (not thrown). */
const copy = (name: string, ref: string) => skopeoCopy(imageRef(cache.url, name, ref), scratchDir('sigpolicy-pull-'));

/** Checks a pull through the cache byte for byte against the pushed image. */
async function expectPulls(name: string, ref: string, img: PushedImage, opts: { arch?: string } = {}) {
  const got = await pullImage(imageRef(cache.url, name, ref), { ...opts, dirPrefix: 'sigpolicy-pull-' });
  expect(sha256(got.manifest)).toBe(img.digest);
  expect(got.blobs.map((b) => b.name).sort()).toEqual(img.blobs.map((b) => b.digest).sort());
  for (const b of got.blobs) expect(b.actual).toBe(b.name);
}

/** Rows the cache's store holds for `name`, read from its SQLite file (the server runs on, in WAL mode). */
function rowsFor(name: string): Record<string, number> {
  const db = new Database(join(storeEnv.PULLTHROUGH_DATA_DIR, 'index.db'), { readonly: true, fileMustExist: true });
  try {
    const count = (table: string) => (db.prepare(`SELECT COUNT(*) AS n FROM ${table} WHERE name = ?`).get(name) as { n: number }).n;
    return { manifests: count('manifests'), tags: count('tags'), blob_links: count('blob_links') };
  } finally {
    db.close();
  }
}
const blobFile = (digest: string) => join(storeEnv.PULLTHROUGH_DATA_DIR, 'blobs', 'sha256', digest.replace('sha256:', ''));

beforeAll(async () => {
  trusted = generateSigningKey('p256');
  upstream = await startUpstreamRegistry();
  images.signed = await push('team/app', 'signed', 'signed');
  await sign('team/app', images.signed.digest, trusted);
  images.unsigned = await push('team/app', 'unsigned', 'unsigned');
  images.otherKey = await push('team/app', 'other-key', 'other-key');
  await sign('team/app', images.otherKey.digest, generateSigningKey('p256'));
  images.replayed = await push('team/app', 'replayed', 'replayed');
  await sign('team/app', images.replayed.digest, trusted, images.signed.digest);
  images.tampered = await push('team/app', 'tampered', 'tampered');
  const good = signatureLayer(trusted, images.tampered.digest);
  const tampered = { ...good, payload: Buffer.from(good.payload.toString().replace('"optional":null', '"optional":{"x":"y"}')) };
  await pushArtifact(upstream.url, 'team/app', cosignSignatureManifest([tampered]), signatureTag(images.tampered.digest));
  images.multi = await pushMultiArchImage(upstream.url, 'team/multi', 'v1', { format: 'oci' });
  await sign('team/multi', images.multi.digest, trusted);
  images.latest = await push('team/moving', 'latest', 'latest-1');
  await sign('team/moving', images.latest.digest, trusted);
  proxy = await startCountingProxy(upstream.url);

  const dir = scratchDir('sigpolicy-e2e-');
  writeFileSync(join(dir, 'cosign.pub'), trusted.publicPem);
  const rule = { upstream: proxy.url, ttlSeconds: 3600, upstreamTimeoutSeconds: 5 };
  const config = {
    rules: [
      { prefix: 'signed', ...rule, verify: { mode: 'enforce', keys: [join(dir, 'cosign.pub')] } },
      { prefix: 'lenient', ...rule, verify: { mode: 'warn', keys: [join(dir, 'cosign.pub')] } },
    ],
  };
  storeEnv = { PULLTHROUGH_CONFIG: join(dir, 'config.yaml'), PULLTHROUGH_DATA_DIR: join(dir, 'data') };
  writeFileSync(storeEnv.PULLTHROUGH_CONFIG, stringify(config));
  cache = await startLocalServer(config, { dataDir: storeEnv.PULLTHROUGH_DATA_DIR, env: storeEnv });
}, 180_000);

afterAll(async () => {
  await cache?.stop();
  await proxy?.stop();
  await upstream?.stop();
});

describe('mode enforce with skopeo against docker-registry', () => {
  it('pulls an image signed by the trusted key byte-exact; the warm pull makes zero upstream requests', async () => {
    await expectPulls('signed/team/app', 'signed', images.signed);
    // The fill looked for signatures: the referrers API (404 on distribution 2.8), the .sig tag, its payload blob.
    const lookups = proxy.requests.filter((r) => r.path.includes('/referrers/') || r.path.includes('.sig'));
    expect(lookups.map((r) => `${r.method} ${r.path.replace(/sha256[-:][0-9a-f]+/, 'D')} ${r.status}`).sort()).toEqual([
      'GET /v2/team/app/manifests/D.sig 200',
      'GET /v2/team/app/referrers/D 404',
    ]);
    proxy.reset();
    await expectPulls('signed/team/app', 'signed', images.signed);
    expect(proxy.requests).toEqual([]);
  }, 120_000);

  it('refuses unsigned, other-key, replayed and tampered images with DENIED naming the rule and why; nothing of them is stored', async () => {
    const why: Record<string, string> = {
      unsigned: 'the image is not signed',
      'other-key': 'no signature is by a key the policy trusts',
      replayed: 'the signature is for another image (digest mismatch)',
      tampered: 'no signature is by a key the policy trusts',
    };
    for (const [tag, reason] of Object.entries(why)) {
      const r = await copy('signed/team/app', tag);
      expect(r.code, tag).not.toBe(0);
      expect(r.stderr).toContain(`denied: signature policy of rule signed: ${reason}`);
    }
    const refused = [images.unsigned, images.otherKey, images.replayed, images.tampered];
    const db = new Database(join(storeEnv.PULLTHROUGH_DATA_DIR, 'index.db'), { readonly: true });
    try {
      const stored = (db.prepare("SELECT digest FROM manifests WHERE name = 'signed/team/app'").all() as Array<{ digest: string }>).map((r) => r.digest);
      for (const img of refused) expect(stored).not.toContain(img.digest);
      const tags = (db.prepare("SELECT tag FROM tags WHERE name = 'signed/team/app'").all() as Array<{ tag: string }>).map((r) => r.tag);
      expect(tags).toEqual(['signed']);
    } finally {
      db.close();
    }
    // Asked for by digest without the manifest, their blobs are refused too.
    const direct = await fetch(`${cache.url}/v2/signed/team/app/blobs/${images.unsigned.blobs[0].digest}`, { redirect: 'manual' });
    expect(direct.status).toBe(403);
    // Their blobs: not stored (each image has a config of its own and a salted layer).
    for (const img of refused) {
      for (const b of img.blobs) {
        expect(existsSync(blobFile(b.digest)), b.digest).toBe(images.signed.blobs.some((s) => s.digest === b.digest));
      }
    }
  }, 120_000);

  it('an image index signed at the index level: every platform pulls', async () => {
    const all = await pullImage(imageRef(cache.url, 'signed/team/multi', 'v1'), { all: true, dirPrefix: 'sigpolicy-pull-' });
    expect(sha256(all.manifest)).toBe(images.multi.digest);
    expect(all.children.sort()).toEqual(images.multi.children!.map((c) => c.digest).sort());
    for (const b of all.blobs) expect(b.actual).toBe(b.name);
    const arm = images.multi.children!.find((c) => c.platform?.architecture === 'arm64')!;
    await expectPulls('signed/team/multi', arm.digest, arm);
  }, 120_000);
});

describe('mode warn', () => {
  it('serves what enforce refuses', async () => {
    await expectPulls('lenient/team/app', 'unsigned', images.unsigned);
    await expectPulls('lenient/team/app', 'other-key', images.otherKey);
    expect(rowsFor('lenient/team/app')).toMatchObject({ manifests: 2, tags: 2 });
  }, 120_000);
});

describe('refresh', () => {
  it('a tag moved upstream to an unsigned image: after refresh the cache still serves the old verified digest', async () => {
    await expectPulls('signed/team/moving', 'latest', images.latest);
    const moved = await push('team/moving', 'latest', 'latest-2-unsigned');
    // Not spawnSync: the counting proxy runs in this process and must answer the CLI's requests.
    const run = await runCommand(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/pullthrough.ts'), 'refresh', 'signed/team/moving:latest'], {
      env: { ...process.env, ...storeEnv, PULLTHROUGH_LOG_LEVEL: 'WARN' }, timeoutMs: 60_000,
    });
    expect(run.code, run.stderr).toBe(1); // the check failed: the move was refused
    expect(JSON.parse(run.stdout.trim().split('\n').at(-1)!)).toMatchObject({ checked: 1, moved: 0, errors: 1 });
    expect(run.stderr).toContain('"event":"tag-move-refused"'); // warnings go to stderr
    const head = await fetch(`${cache.url}/v2/signed/team/moving/manifests/latest`, { method: 'HEAD' });
    expect([head.status, head.headers.get('docker-content-digest')]).toEqual([200, images.latest.digest]);
    await expectPulls('signed/team/moving', 'latest', images.latest);
    expect(rowsFor('signed/team/moving').manifests).toBe(1);
    expect(moved.digest).not.toBe(images.latest.digest);
  }, 120_000);
});
