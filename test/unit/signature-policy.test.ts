/**
 * The signature policy at fill time (issue 13), through the registry app on the embedded stores, against the fake
 * upstream: signatures made here with keys generated here, laid out as cosign lays them out.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { stringify } from 'yaml';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  bundleManifest, cosignSignatureManifest, dsseBundle, generateSigningKey, putArtifact, signatureLayer, signatureTag, type SigningKey,
} from '../support/cosign-signatures.js';
import type { Metrics } from '../../shared/observe/metrics.js';
import { inScope, newScope } from '../../shared/observe/request-scope.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { createHarness, silentLog } from '../support/harness.js';
import { recordingMetrics } from '../support/recording-metrics.js';

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
let trusted: SigningKey;

async function start(verify: unknown, opts: { referrers?: boolean; metrics?: Metrics } = {}) {
  up = await startFakeUpstream({ referrers: opts.referrers });
  h = await createHarness([{ prefix: 'p', upstream: up.url, ttlSeconds: 3600, verify } as never], opts.metrics ? { metrics: opts.metrics } : {});
}

beforeEach(() => {
  trusted = generateSigningKey('p256');
  silentLog.lines.length = 0;
});
afterEach(async () => {
  h.close();
  await up.close();
});

/** Requests other than the auth dance. */
const upstreamRequests = () => up.requests.filter((r) => r.kind !== 'token' && r.kind !== 'base');
/** Every row the store holds for `name` (manifests, tags, blob links, listings). */
function rowsFor(name: string): Record<string, number> {
  const db = new Database(h.dbPath, { readonly: true });
  try {
    const count = (table: string) => (db.prepare(`SELECT COUNT(*) AS n FROM ${table} WHERE name = ?`).get(name) as { n: number }).n;
    return { manifests: count('manifests'), tags: count('tags'), blob_links: count('blob_links'), listings: count('listings') };
  } finally {
    db.close();
  }
}
const verifyLines = () => silentLog.lines.filter((l) => (l.extra[0] as { event?: string } | undefined)?.event === 'verify').map((l) => l.extra[0] as Record<string, unknown>);

function signedImage(repo: string, tag: string, key: SigningKey | undefined, layer = `${repo}:${tag}`) {
  const img = seedImage(up, repo, tag, [Buffer.from(layer)]);
  if (key) putArtifact(up, repo, cosignSignatureManifest([signatureLayer(key, img.digest)]), signatureTag(img.digest));
  return img;
}

describe('mode enforce', () => {
  beforeEach(() => start({ mode: 'enforce', keys: [trusted.publicPem] }));

  it('serves and stores an image signed by a trusted key; a warm pull asks the upstream nothing', async () => {
    const img = signedImage('org/app', 'v1', trusted);
    const res = await h.request('GET', '/v2/p/org/app/manifests/v1');
    expect(res.status).toBe(200);
    expect(h.bodyOf(res)!.equals(img.body)).toBe(true);
    const stored = await h.index.getManifest('p/org/app', img.digest as never);
    expect(stored!.verification).toMatchObject({ result: 'verified', via: 'tag', keySet: expect.stringMatching(/^sha256:/), keyId: expect.stringMatching(/^sha256:/) });
    expect(verifyLines()).toEqual([expect.objectContaining({ result: 'verified', rule: 'p', name: 'p/org/app', digest: img.digest, via: 'tag' })]);

    up.reset();
    for (const ref of ['v1', img.digest]) expect((await h.request('GET', `/v2/p/org/app/manifests/${ref}`)).status).toBe(200);
    const blob = await h.request('GET', `/v2/p/org/app/blobs/${img.layerDigests[0]}`);
    expect(blob.status).toBe(307);
    up.reset();
    expect((await h.request('HEAD', '/v2/p/org/app/manifests/v1')).status).toBe(200);
    expect(upstreamRequests()).toEqual([]);
  });

  it('refuses an unsigned image with 403 DENIED naming the rule and why, and stores nothing of it', async () => {
    const img = signedImage('org/app', 'unsigned', undefined);
    const res = await h.request('GET', '/v2/p/org/app/manifests/unsigned');
    expect(res.status).toBe(403);
    expect(h.jsonOf(res)).toEqual({ errors: [{ code: 'DENIED', message: 'signature policy of rule p: the image is not signed' }] });
    expect(rowsFor('p/org/app')).toEqual({ manifests: 0, tags: 0, blob_links: 0, listings: 0 });
    expect(await h.blobs.stat(img.layerDigests[0] as never)).toBeUndefined();
    expect(verifyLines()).toEqual([expect.objectContaining({ result: 'refused', reason: 'unsigned', digest: img.digest })]);
    // By digest too; and a retry within negativeCacheSeconds asks for the manifest only, not for signatures again.
    expect((await h.request('GET', `/v2/p/org/app/manifests/${img.digest}`)).status).toBe(403);
    up.reset();
    expect((await h.request('GET', '/v2/p/org/app/manifests/unsigned')).status).toBe(403);
    expect(upstreamRequests().map((r) => r.path)).toEqual(['/v2/org/app/manifests/unsigned']);
    expect(rowsFor('p/org/app').manifests).toBe(0);
    // Its blobs asked for by digest, without the manifest: refused too, before any upstream request.
    up.reset();
    for (const method of ['GET', 'HEAD']) {
      const blob = await h.request(method, `/v2/p/org/app/blobs/${img.layerDigests[0]}`);
      expect(blob.status).toBe(403);
    }
    expect(h.jsonOf(await h.request('GET', `/v2/p/org/app/blobs/${img.configDigest}`)).errors[0].message).toBe(
      'signature policy of rule p: no verified manifest of this repository references the blob',
    );
    expect(upstreamRequests()).toEqual([]);
    expect(await h.blobs.stat(img.layerDigests[0] as never)).toBeUndefined();
  });

  it('refuses a signature by another key, a signature of another image, and a tampered payload', async () => {
    signedImage('org/app', 'other-key', generateSigningKey('p256'));
    const a = signedImage('org/app', 'a', trusted);
    const b = seedImage(up, 'org/app', 'b', [Buffer.from('image b')]);
    putArtifact(up, 'org/app', cosignSignatureManifest([signatureLayer(trusted, a.digest)]), signatureTag(b.digest));
    const t = seedImage(up, 'org/app', 'tampered', [Buffer.from('image t')]);
    const good = signatureLayer(trusted, t.digest);
    const tampered = { ...good, payload: Buffer.from(good.payload.toString().replace('registry.test/image', 'registry.test/other')) };
    putArtifact(up, 'org/app', cosignSignatureManifest([tampered]), signatureTag(t.digest));

    const messages: Record<string, string> = {};
    for (const tag of ['other-key', 'b', 'tampered', 'a']) {
      const res = await h.request('GET', `/v2/p/org/app/manifests/${tag}`);
      messages[tag] = res.status === 403 ? h.jsonOf(res).errors[0].message : String(res.status);
    }
    expect(messages).toEqual({
      'other-key': 'signature policy of rule p: no signature is by a key the policy trusts',
      b: 'signature policy of rule p: the signature is for another image (digest mismatch)',
      tampered: 'signature policy of rule p: no signature is by a key the policy trusts',
      a: '200',
    });
    expect(rowsFor('p/org/app').manifests).toBe(1);
  });

  it('an index signed at the index level: every platform manifest pulls, verified through the index with no signature lookups', async () => {
    const amd = seedImage(up, 'org/multi', undefined, [Buffer.from('amd64 layer')], { arch: 'amd64' });
    const arm = seedImage(up, 'org/multi', undefined, [Buffer.from('arm64 layer')], { arch: 'arm64' });
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: OCI_INDEX,
      manifests: [amd, arm].map((m, i) => ({ mediaType: m.mediaType, digest: m.digest, size: m.body.length, platform: { os: 'linux', architecture: ['amd64', 'arm64'][i] } })),
    }));
    const indexDigest = up.putManifest('org/multi', 'v2', { body: index, contentType: OCI_INDEX });
    putArtifact(up, 'org/multi', cosignSignatureManifest([signatureLayer(trusted, indexDigest)]), signatureTag(indexDigest));

    expect((await h.request('GET', '/v2/p/org/multi/manifests/v2')).status).toBe(200);
    up.reset();
    for (const m of [amd, arm]) {
      const res = await h.request('GET', `/v2/p/org/multi/manifests/${m.digest}`);
      expect(res.status).toBe(200);
      expect((await h.index.getManifest('p/org/multi', m.digest as never))!.verification).toMatchObject({ result: 'verified', via: `index ${indexDigest}` });
    }
    expect(upstreamRequests().map((r) => r.path)).toEqual([amd, arm].map((m) => `/v2/org/multi/manifests/${m.digest}`));
    // A platform manifest of an unsigned index is on its own, and refused.
    const lone = seedImage(up, 'org/multi', undefined, [Buffer.from('lone')]);
    expect((await h.request('GET', `/v2/p/org/multi/manifests/${lone.digest}`)).status).toBe(403);
  });

  it("signature artifacts stay pullable: the .sig manifest and its payload blob, which clients verify themselves", async () => {
    const img = signedImage('org/app', 'v1', trusted);
    const sig = await h.request('GET', `/v2/p/org/app/manifests/${signatureTag(img.digest)}`);
    expect(sig.status).toBe(200);
    const layers = (h.jsonOf(sig) as { layers: Array<{ digest: string }> }).layers;
    const payload = await h.request('GET', `/v2/p/org/app/blobs/${layers[0].digest}`);
    expect(payload.status).toBe(307);
    expect(h.readLocation(payload.headers.Location as string).toString()).toContain(img.digest);
    expect((await h.index.getManifest('p/org/app', sig.headers['Docker-Content-Digest'] as never))!.verification).toMatchObject({ result: 'exempt' });
  });

  it('an upstream outage while looking for signatures is 503 and stores nothing (not a refusal)', async () => {
    signedImage('org/app', 'v1', trusted);
    up.faults.status = { kind: 'referrers', code: 503 };
    const res = await h.request('GET', '/v2/p/org/app/manifests/v1');
    expect(res.status).toBe(503);
    expect(rowsFor('p/org/app').manifests).toBe(0);
    up.faults.status = undefined;
    expect((await h.request('GET', '/v2/p/org/app/manifests/v1')).status).toBe(200);
  });

  it('verifies again when the policy keys change, then not again', async () => {
    const img = signedImage('org/app', 'v1', trusted);
    expect((await h.request('GET', '/v2/p/org/app/manifests/v1')).status).toBe(200);
    const first = (await h.index.getManifest('p/org/app', img.digest as never))!.verification!;
    const rule = h.deps.resolve('p/org/app').rule;
    const other = generateSigningKey('ed25519');
    rule.verify = [{ mode: 'enforce', keys: [other.publicPem] }];
    up.reset();
    const refused = await h.request('GET', '/v2/p/org/app/manifests/v1');
    expect(refused.status).toBe(403);
    expect(upstreamRequests().map((r) => r.kind).sort()).toEqual(['blob', 'manifest', 'referrers']);
    rule.verify = [{ mode: 'enforce', keys: [other.publicPem, trusted.publicPem] }];
    up.reset();
    expect((await h.request('GET', `/v2/p/org/app/manifests/${img.digest}`)).status).toBe(200);
    const again = (await h.index.getManifest('p/org/app', img.digest as never))!.verification!;
    expect(again).toMatchObject({ result: 'verified', via: 'tag', keyId: first.keyId });
    // Five concurrent pulls after another key change make the verdict once.
    rule.verify = [{ mode: 'enforce', keys: [trusted.publicPem] }];
    up.reset();
    silentLog.lines.length = 0;
    const five = await Promise.all(Array.from({ length: 5 }, () => h.request('GET', `/v2/p/org/app/manifests/${img.digest}`)));
    expect(five.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(verifyLines()).toHaveLength(1);
    expect(upstreamRequests().filter((r) => r.kind === 'referrers')).toHaveLength(1);
    expect(again.keySet).not.toBe(first.keySet);
    up.reset();
    expect((await h.request('GET', '/v2/p/org/app/manifests/v1')).status).toBe(200);
    expect(upstreamRequests()).toEqual([]);
  });
});

describe('mode warn, repository patterns, referrers', () => {
  it('warn serves an unsigned image, stores it as unsigned with the reason, and logs it', async () => {
    await start({ mode: 'warn', keys: [trusted.publicPem] });
    const img = signedImage('org/app', 'v1', generateSigningKey('p384'));
    const res = await h.request('GET', '/v2/p/org/app/manifests/v1');
    expect(res.status).toBe(200);
    expect((await h.index.getManifest('p/org/app', img.digest as never))!.verification).toMatchObject({ result: 'unsigned', reason: 'unknown-key' });
    // Blobs are not guarded in warn: even one no manifest here references is served.
    const loose = seedImage(up, 'org/app', undefined, [Buffer.from('loose layer')]);
    expect((await h.request('GET', `/v2/p/org/app/blobs/${loose.layerDigests[0]}`)).status).toBe(307);
    expect(verifyLines()).toEqual([expect.objectContaining({ result: 'unsigned', reason: 'unknown-key' })]);
    expect(silentLog.lines.find((l) => (l.extra[0] as { event?: string })?.event === 'verify')!.level).toBe('warn');
  });

  it('`npx pullthrough ls` shows each manifest\'s verdict (table column SIGNATURE, and in --json)', async () => {
    const verify = { mode: 'warn', keys: [trusted.publicPem] };
    await start(verify);
    const signed = signedImage('org/app', 'signed', trusted);
    signedImage('org/app', 'unsigned', undefined);
    for (const tag of ['signed', 'unsigned', signatureTag(signed.digest)]) expect((await h.request('GET', `/v2/p/org/app/manifests/${tag}`)).status).toBe(200);
    const configPath = join(h.dir, 'config.yaml');
    writeFileSync(configPath, stringify({ rules: [{ prefix: 'p', upstream: up.url, verify }] }));
    const ls = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', 'ls', ...args], {
      cwd: resolve(import.meta.dirname, '../..'), encoding: 'utf8', timeout: 60_000,
      env: { ...process.env, PULLTHROUGH_LOG_LEVEL: 'WARN', PULLTHROUGH_CONFIG: configPath, PULLTHROUGH_DATA_DIR: h.dir },
    });
    const table = ls('p/org/app');
    expect(table.status, table.stderr).toBe(0);
    const column = Object.fromEntries(table.stdout.split('\n').filter((l) => l.startsWith('p/org/app')).map((l) => [l.split(/\s+/)[1], l.split(/\s{2,}/).at(-1)]));
    expect(column).toEqual({ signed: 'verified', unsigned: 'unsigned: unsigned', [signatureTag(signed.digest)]: 'signature' });
    const json = JSON.parse(ls('--json').stdout.trim().split('\n').at(-1)!) as { repositories: Array<{ manifests: Array<{ digest: string; verification?: { result: string; via?: string } }> }> };
    expect(json.repositories[0].manifests.find((m) => m.digest === signed.digest)!.verification).toMatchObject({ result: 'verified', via: 'tag' });
  }, 60_000);

  it('only repositories matching the pattern are checked; the first matching policy applies', async () => {
    await start([{ mode: 'enforce', repositories: '^myorg/', keys: [trusted.publicPem] }, { mode: 'off' }]);
    signedImage('myorg/app', 'v1', undefined);
    const other = signedImage('vendor/app', 'v1', undefined);
    expect((await h.request('GET', '/v2/p/myorg/app/manifests/v1')).status).toBe(403);
    expect((await h.request('GET', '/v2/p/vendor/app/manifests/v1')).status).toBe(200);
    expect((await h.index.getManifest('p/vendor/app', other.digest as never))!.verification).toBeUndefined();
  });

  it('finds cosign signatures and Sigstore bundles through the referrers API', async () => {
    await start({ mode: 'enforce', keys: [trusted.publicPem] }, { referrers: true });
    const one = seedImage(up, 'org/app', 'sig', [Buffer.from('one')]);
    putArtifact(up, 'org/app', cosignSignatureManifest([signatureLayer(trusted, one.digest)], { digest: one.digest, size: one.body.length, mediaType: one.mediaType }));
    const two = seedImage(up, 'org/app', 'bundle', [Buffer.from('two')]);
    putArtifact(up, 'org/app', bundleManifest(dsseBundle(trusted, two.digest), { digest: two.digest, size: two.body.length, mediaType: two.mediaType }));
    expect((await h.request('GET', '/v2/p/org/app/manifests/sig')).status).toBe(200);
    expect((await h.request('GET', '/v2/p/org/app/manifests/bundle')).status).toBe(200);
    expect((await h.index.getManifest('p/org/app', two.digest as never))!.verification).toMatchObject({ result: 'verified', via: 'referrers' });
  });
});

describe('request log and metrics', () => {
  it('each manifest request notes the verdict on what it answered; only verdicts made are counted', async () => {
    const rec = recordingMetrics();
    await start({ mode: 'enforce', keys: [trusted.publicPem] }, { metrics: rec.metrics });
    const signed = signedImage('org/app', 'signed', trusted);
    signedImage('org/app', 'unsigned', undefined);
    const noted = async (path: string) => {
      const scope = newScope();
      const res = await inScope(scope, () => h.request('GET', path));
      return [res.status, scope.verify];
    };
    expect(await noted('/v2/p/org/app/manifests/signed')).toEqual([200, 'verified']);
    expect(await noted('/v2/p/org/app/manifests/signed')).toEqual([200, 'verified']);
    expect(await noted('/v2/p/org/app/manifests/unsigned')).toEqual([403, 'refused']);
    expect(await noted('/v2/p/org/app/manifests/unsigned')).toEqual([403, 'refused']); // remembered: no new verdict
    expect(await noted(`/v2/p/org/app/manifests/${signatureTag(signed.digest)}`)).toEqual([200, 'exempt']);
    expect(await noted(`/v2/p/org/app/blobs/${signed.layerDigests[0]}`)).toEqual([307, undefined]);
    expect(rec.events.verification.map(([e]) => e)).toEqual([
      { rule: 'p', result: 'verified' }, { rule: 'p', result: 'refused' }, { rule: 'p', result: 'exempt' },
    ]);
  });
});

describe('refresh', () => {
  it('a tag moved upstream to an unsigned image keeps serving the previous verified digest; a signed move moves it', async () => {
    await start({ mode: 'enforce', keys: [trusted.publicPem] });
    const v1 = signedImage('org/app', 'latest', trusted, 'first');
    expect((await h.request('GET', '/v2/p/org/app/manifests/latest')).status).toBe(200);
    const unsigned = signedImage('org/app', 'latest', undefined, 'second, unsigned');
    h.clock.now += 3601 * 1000;
    const report = await h.refresher.refreshDue();
    expect(report).toMatchObject({ checked: 1, moved: 0, errors: 1 });
    const tag = await h.index.getTag('p/org/app', 'latest');
    expect(tag).toMatchObject({ digest: v1.digest, lastCheck: { result: 'error', error: 'signature policy of rule p: the image is not signed' } });
    expect(await h.index.getManifest('p/org/app', unsigned.digest as never)).toBeUndefined();
    expect(silentLog.lines.some((l) => (l.extra[0] as { event?: string })?.event === 'tag-move-refused')).toBe(true);
    const served = await h.request('GET', '/v2/p/org/app/manifests/latest');
    expect([served.status, served.headers['Docker-Content-Digest']]).toEqual([200, v1.digest]);

    const v3 = signedImage('org/app', 'latest', trusted, 'third, signed');
    h.clock.now += 3601 * 1000;
    expect(await h.refresher.refreshDue()).toMatchObject({ checked: 1, moved: 1, errors: 0 });
    expect((await h.request('GET', '/v2/p/org/app/manifests/latest')).headers['Docker-Content-Digest']).toBe(v3.digest);
  });
});
