/**
 * Hostile input: a few thousand generated requests (random and crafted methods, paths, names, references,
 * digests, query strings, headers) against a cache holding real pulled images. Every answer is < 500 and a
 * spec-coded OCI error when it is an error, nothing internal leaks, nothing invalid reaches an upstream, and
 * the store (every SQLite row, every file under the data directory) is the same afterwards.
 *
 * Seeded: the seed is printed; replay with `HOSTILE_SEED=<seed> npx vitest run test/unit/hostile-input.test.ts`
 * (`HOSTILE_COUNT` changes the number of random requests; `HOSTILE_UPSTREAM_REFERRERS=1` lets the fake
 * upstreams answer the referrers API).
 *
 * Safe by construction: each fake upstream is reached by one rule only and everything it holds is pulled
 * before the snapshot, so a valid name maps either to a cached repository or to one its upstream does not know.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RegistryResponse } from '../../shared/http/types.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { createHarness, silentLog } from '../support/harness.js';
import { codeOf, createChecks, UPSTREAM_PATH, type Via } from '../support/hostile-checks.js';
import { createRandom, randomRequest, type HostileRequest, type HostileTargets } from '../support/hostile-requests.js';
import { countRows, snapshotStore, type StoreSnapshot } from '../support/hostile-snapshot.js';

const SEED = process.env.HOSTILE_SEED ? Number(process.env.HOSTILE_SEED) : 20261129;
const COUNT = process.env.HOSTILE_COUNT ? Number(process.env.HOSTILE_COUNT) : 3000;
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
let upA: FakeUpstream; // prefix `local`
let upB: FakeUpstream; // prefix `hub` (Docker Hub style: one-part names get library/)
let upC: FakeUpstream; // prefix `nested/reg`, holds nothing
let h: Awaited<ReturnType<typeof createHarness>>;
let before: StoreSnapshot;
let targets: HostileTargets;
let checks: ReturnType<typeof createChecks>;
const pulled: Array<{ name: string; ref: string; digest: string; body: Buffer }> = [];
const blobsPulled: Array<{ name: string; digest: string; bytes: Buffer }> = [];
const refs: Record<string, string> = {};
const manifestDigests = new Set<string>();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const upstreamCount = () => upA.count() + upB.count() + upC.count();

/** Waits until no fill runs: no lease row, no temp file. */
async function settled(): Promise<void> {
  for (let i = 0; i < 150 && (countRows(h.dbPath, 'leases') > 0 || readdirSync(join(h.dir, 'tmp')).length > 0); i++) await sleep(20);
}

async function getBlob(name: string, digest: string): Promise<Buffer> {
  for (let i = 0; i < 50; i++) {
    const res = await h.request('GET', `/v2/${name}/blobs/${digest}`);
    expect(res.status).toBe(307);
    if (res.headers.Location.startsWith('/_blobs/')) return h.readLocation(res.headers.Location);
    await sleep(20);
  }
  throw new Error(`blob ${digest} never filled`);
}

async function pullImage(name: string, ref: string, digest: string, body: Buffer, blobs: Array<[string, Buffer]>) {
  for (const r of [ref, digest]) {
    const res = await h.request('GET', `/v2/${name}/manifests/${r}`);
    expect(res.status).toBe(200);
    expect(res.headers['Docker-Content-Digest']).toBe(digest);
    pulled.push({ name, ref: r, digest, body });
    manifestDigests.add(digest);
  }
  for (const [d, bytes] of blobs) {
    expect((await getBlob(name, d)).equals(bytes)).toBe(true);
    expect((await h.request('HEAD', `/v2/${name}/blobs/${d}`)).headers['Content-Length']).toBe(String(bytes.length));
    blobsPulled.push({ name, digest: d, bytes });
  }
}

beforeAll(async () => {
  // HOSTILE_UPSTREAM_REFERRERS=1: upstreams answer the referrers API (an empty index for anything unknown, as
  // registries do), which shows the kept-referrers rows growing with client-chosen digests (reported).
  const fakeOptions = process.env.HOSTILE_UPSTREAM_REFERRERS ? { referrers: true } : {};
  [upA, upB, upC] = await Promise.all([startFakeUpstream(fakeOptions), startFakeUpstream(fakeOptions), startFakeUpstream(fakeOptions)]);
  h = await createHarness(
    [
      { prefix: 'local', upstream: upA.url },
      { prefix: 'hub', upstream: upB.url, dockerHubLibrary: true },
      { prefix: 'nested/reg', upstream: upC.url },
    ],
    { blobFill: { waitSeconds: 0.05 } },
  );
  // A multi-layer OCI image under two tags, a Docker schema2 image, and an OCI index with two children.
  const app = seedImage(upA, 'team/app', 'v1', [Buffer.from('layer one '.repeat(500)), Buffer.from('layer two'), Buffer.from('layer three')]);
  upA.putManifest('team/app', 'latest', { body: app.body, contentType: app.mediaType });
  const tool = seedImage(upA, 'team/tool', '2.0', [Buffer.from('docker layer')], { docker: true });
  const amd = seedImage(upB, 'library/multi', undefined, [Buffer.from('amd64 layer')], { arch: 'amd64' });
  const arm = seedImage(upB, 'library/multi', undefined, [Buffer.from('arm64 layer')], { arch: 'arm64' });
  const indexBody = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [amd, arm].map((c, i) => ({ mediaType: c.mediaType, digest: c.digest, size: c.body.length, platform: { architecture: ['amd64', 'arm64'][i], os: 'linux' } })),
  }));
  const indexDigest = upB.putManifest('library/multi', '1.0', { body: indexBody, contentType: OCI_INDEX });
  const blobsOf = (img: typeof app, layers: Buffer[]): Array<[string, Buffer]> => [[img.configDigest, img.config], ...img.layerDigests.map((d, i): [string, Buffer] => [d, layers[i]])];

  await pullImage('local/team/app', 'v1', app.digest, app.body, blobsOf(app, [Buffer.from('layer one '.repeat(500)), Buffer.from('layer two'), Buffer.from('layer three')]));
  await pullImage('local/team/app', 'latest', app.digest, app.body, []);
  await pullImage('local/team/tool', '2.0', tool.digest, tool.body, blobsOf(tool, [Buffer.from('docker layer')]));
  await pullImage('hub/multi', '1.0', indexDigest, indexBody, []);
  await pullImage('hub/library/multi', amd.digest, amd.digest, amd.body, blobsOf(amd, [Buffer.from('amd64 layer')]));
  await pullImage('hub/multi', arm.digest, arm.digest, arm.body, blobsOf(arm, [Buffer.from('arm64 layer')]));
  for (const name of ['local/team/app', 'local/team/tool', 'hub/library/multi']) expect((await h.request('GET', `/v2/${name}/tags/list`)).status).toBe(200);
  await settled();

  Object.assign(refs, {
    manifest: app.digest, layer: app.layerDigests[0], config: app.configDigest, index: indexDigest, child: arm.digest,
    childLayer: arm.layerDigests[0], toolLayer: tool.layerDigests[0], nsA: upA.host,
  });
  const appTarget = { tags: ['v1', 'latest'], manifestDigests: [app.digest], blobDigests: [app.configDigest, ...app.layerDigests] };
  const toolTarget = { tags: ['2.0'], manifestDigests: [tool.digest], blobDigests: [tool.configDigest, ...tool.layerDigests] };
  const multiTarget = { tags: ['1.0'], manifestDigests: [indexDigest, amd.digest, arm.digest], blobDigests: [amd.configDigest, ...amd.layerDigests, arm.configDigest, ...arm.layerDigests] };
  targets = {
    prefixes: ['local', 'hub', 'nested/reg'],
    nsHosts: [upA.host, upB.host, upC.host, 'docker.io'],
    cached: [
      { name: 'local/team/app', ...appTarget },
      { name: 'team/app', ns: upA.host, ...appTarget },
      { name: 'local/team/tool', ...toolTarget },
      { name: 'hub/multi', ...multiTarget },
      { name: 'hub/library/multi', ...multiTarget },
      { name: 'multi', ns: 'docker.io', ...multiTarget },
      { name: 'library/multi', ns: upB.host, ...multiTarget },
    ],
  };
  checks = createChecks({ app: h.app, readLocation: h.readLocation, secrets: [h.dir, process.cwd()], manifestDigests });
  before = snapshotStore(h.dbPath, h.dir);
  expect(before.tables.manifests).toHaveLength(5);
  expect(Object.keys(before.files).filter((f) => f.startsWith('blobs/sha256/') && !f.endsWith('/'))).toHaveLength(10);
}, 30_000);

afterAll(async () => {
  h?.close();
  await Promise.all([upA?.close(), upB?.close(), upC?.close()]);
});

const fill = (template: string) => template.replace(/\{(\w+)\}/g, (_, k: string) => refs[k]);

/** Short test titles for long crafted paths. */
const titled = (rows: Array<[string, string, number, string | undefined]>) =>
  rows.map(([method, template, status, code]) => ({
    method, template, status, code,
    title: `${method} ${template.length > 90 ? `${template.slice(0, 60)}…(${template.length} chars)` : template} → ${status}${code ? ` ${code}` : ''}`,
  }));

describe('crafted hostile requests get the spec status and code', () => {
  it.each(titled([
    ['GET', '/v2/Local/team/app/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/Team/app/manifests/v1', 400, 'NAME_INVALID'],
    ['HEAD', '/v2/local/Team/app/manifests/v1', 400, undefined],
    ['GET', '/v2/local/team%2Fapp/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/team%2fapp/blobs/{layer}', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/team/%2e%2e/team/app/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/team/../team/app/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/./team/app/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local//team/app/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/team/app%00/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/team\\app/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', '/v2/local/tëam/app/manifests/v1', 400, 'NAME_INVALID'],
    ['GET', `/v2/local/${'a'.repeat(10_240)}/manifests/v1`, 400, 'NAME_INVALID'],
    ['GET', `/v2/local/${'a'.repeat(250)}/manifests/v1`, 400, 'NAME_INVALID'],
    ['GET', `/v2/local/team/app/manifests/${'t'.repeat(129)}`, 404, 'MANIFEST_UNKNOWN'],
    ['GET', `/v2/local/team/app/manifests/${'t'.repeat(128)}`, 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/local/team/app/manifests/', 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/local/team/app/manifests/.hidden', 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/local/team/app/manifests/%2e%2e', 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/local/team/app/manifests/v1@x', 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/local/team/app/manifests/v1:x', 400, 'DIGEST_INVALID'],
    ['GET', `/v2/local/team/app/manifests/sha256:${'a'.repeat(63)}`, 400, 'DIGEST_INVALID'],
    ['GET', `/v2/local/team/app/blobs/sha256:${'a'.repeat(63)}`, 400, 'DIGEST_INVALID'],
    ['GET', `/v2/local/team/app/blobs/sha256:${'A'.repeat(64)}`, 400, 'DIGEST_INVALID'],
    ['HEAD', `/v2/local/team/app/blobs/sha512:${'a'.repeat(64)}`, 400, undefined],
    ['GET', `/v2/local/team/app/blobs/md5:${'a'.repeat(32)}`, 400, 'DIGEST_INVALID'],
    ['GET', `/v2/local/team/app/blobs/sha256%3A${'a'.repeat(64)}`, 400, 'DIGEST_INVALID'],
    ['GET', '/v2/local/team/app/blobs/', 400, 'DIGEST_INVALID'],
    ['GET', `/v2/local/team/app/referrers/sha256:${'a'.repeat(63)}`, 400, 'DIGEST_INVALID'],
    ['GET', '/v2/local/team/app/blobs/{manifest}', 404, 'BLOB_UNKNOWN'],
    ['HEAD', '/v2/local/team/app/blobs/{manifest}', 404, undefined],
    ['GET', '/v2/team/app/blobs/{manifest}?ns={nsA}', 404, 'BLOB_UNKNOWN'],
    ['GET', '/v2/hub/multi/blobs/{index}', 404, 'BLOB_UNKNOWN'],
    ['GET', '/v2/hub/library/multi/blobs/{child}', 404, 'BLOB_UNKNOWN'],
    ['PUT', '/v2/local/team/app/manifests/v1', 405, 'UNSUPPORTED'],
    ['DELETE', '/v2/local/team/app/blobs/{layer}', 405, 'UNSUPPORTED'],
    ['POST', '/v2/local/team/app/blobs/uploads/', 405, 'UNSUPPORTED'],
    ['PATCH', '/v2/local/team/app/blobs/uploads/0b0e-uuid', 405, 'UNSUPPORTED'],
    ['GET', '/v2/Local/x/blobs/uploads/', 405, 'UNSUPPORTED'],
    ['OPTIONS', '/v2/', 405, 'UNSUPPORTED'],
    ['TRACE', '/v2/_catalog', 405, 'UNSUPPORTED'],
    ['G3T', '/v2/local/team/app/manifests/v1', 405, 'UNSUPPORTED'],
    ['GET', '/v2/nope/app/manifests/v1', 404, 'NAME_UNKNOWN'],
    ['GET', '/v2/local/manifests/v1', 404, 'NAME_UNKNOWN'],
    ['GET', '/v2/nested/x/manifests/v1', 404, 'NAME_UNKNOWN'],
    ['GET', '/v2/team/app/manifests/v1?ns=registry.example.com', 404, 'NAME_UNKNOWN'],
    ['GET', '/v3/local/team/app/manifests/v1', 404, 'NAME_UNKNOWN'],
    ['GET', '/v2/local/team/app/manifests/v1/', 404, 'NAME_UNKNOWN'],
    ['GET', '/v2/local/team/app/tags/list?n=abc', 400, 'UNSUPPORTED'],
    ['GET', '/v2/local/team/app/tags/list?n=-1', 400, 'UNSUPPORTED'],
    ['GET', '/v2/_catalog?n=99999999999', 400, 'UNSUPPORTED'],
    ['GET', '/v2/_catalog?n=1.5', 400, 'UNSUPPORTED'],
    ['GET', '/v2/local/team/app/blobs/{layer}?pt-hop=abc', 307, undefined],
    ['GET', '/v2/local/team/app/blobs/{layer}?pt-hop=-5&pt-hop=abc', 307, undefined],
    ['GET', '/v2/local/team/app/manifests/v1?n=abc&last=%00&ns=', 404, 'NAME_UNKNOWN'],
    ['HEAD', '/v2/local/team/app/manifests/{manifest}', 200, undefined],
    ['GET', '/v2/_catalog', 200, undefined],
  ]))('$title', async ({ method, template, status, code }) => {
    const [path, query = ''] = fill(template).split('?');
    const r: HostileRequest = { method, path, query, headers: {} };
    const was = upstreamCount();
    for (const via of ['direct', 'event'] as const) {
      const { res, problems } = await checks.send(r, via);
      expect(problems).toEqual([]);
      expect(res.status).toBe(status);
      if (code) expect(codeOf(res)).toBe(code);
    }
    // Nothing that fails the grammar, no push, no unknown prefix, no manifest digest on the blobs route is sent upstream.
    if (status === 400 || status === 405 || code === 'BLOB_UNKNOWN' || code === 'NAME_UNKNOWN') expect(upstreamCount()).toBe(was);
  });

  it('counts a pt-hop that is not a non-negative integer as 0 (slow fill → pt-hop=1)', async () => {
    upC.faults.delayMs = 500;
    try {
      for (const [i, hop] of ['abc', '-5', '', '1.5'].entries()) {
        const path = `/v2/nested/reg/slow/blobs/sha256:${String(i).repeat(64)}`;
        const res = await h.request('GET', `${path}?pt-hop=${hop}`);
        expect(res.status).toBe(307);
        expect(res.headers.Location).toBe(`${path}?pt-hop=1`);
      }
    } finally {
      await sleep(550); // the fills end with the upstream's 404; nothing is stored
      upC.faults.delayMs = 0;
      await settled();
    }
    const finalRes = await h.request('GET', `/v2/nested/reg/slow/blobs/sha256:${'0'.repeat(64)}`);
    expect({ status: finalRes.status, code: codeOf(finalRes) }).toEqual({ status: 404, code: 'BLOB_UNKNOWN' });
  });
});

describe(`${COUNT} generated hostile requests (seed ${SEED})`, () => {
  it('never answer 5xx, always answer errors as spec-coded OCI JSON, and leak nothing', async () => {
    console.log(`hostile-input: seed ${SEED} (replay with HOSTILE_SEED=${SEED}), ${COUNT} random requests`);
    const rnd = createRandom(SEED);
    const logged = silentLog.lines.length;
    const problems: string[] = [];
    const statuses = new Map<string, number>();
    const started = performance.now();
    for (let i = 0; i < COUNT; i++) {
      const r = randomRequest(rnd, targets);
      // Direct, through the Lambda event (encoded path), and through the event with an HTTP-API-decoded path.
      const via: Via = i % 2 === 0 ? 'direct' : i % 4 === 1 ? 'event' : 'event-decoded';
      const { seen, res, problems: found } = await checks.send(r, via);
      // The one designed 5xx: a blob past the last redirect hop, which a client may claim with pt-hop ≥ maxHops.
      const pastLastHop = res.status === 503 && codeOf(res) === 'UNAVAILABLE' && Number(seen.query.get('pt-hop')) >= 8;
      const key = `${res.status} ${codeOf(res) ?? ''}`.trim();
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
      for (const f of pastLastHop ? found.filter((x) => !x.startsWith('status 503')) : found) {
        problems.push(`#${i} ${r.method} ${JSON.stringify(r.path.slice(0, 150))}?${JSON.stringify(r.query.slice(0, 80))}: ${f}`);
      }
      // Both adapters agree (the event path upper-cases the method, so compare upper-case methods only).
      if (i % 10 === 0 && r.method === r.method.toUpperCase()) {
        const other = await checks.send(r, 'event');
        // A "come back" redirect depends on timing (the fill did not end within the wait), not on the adapter.
        const retry = (x: RegistryResponse) => x.status === 307 && !x.headers.Location?.startsWith('/_blobs/');
        if (!retry(res) && !retry(other.res) && (other.res.status !== res.status || codeOf(other.res) !== codeOf(res))) {
          problems.push(`#${i} ${r.method} ${JSON.stringify(r.path.slice(0, 150))}: direct and Lambda-event answers differ: ${res.status} vs ${other.res.status}`);
        }
      }
    }
    await settled();
    console.log(`hostile-input: ${COUNT} requests in ${Math.round(performance.now() - started)} ms; answers: ${[...statuses].sort().map(([k, n]) => `${k}×${n}`).join(', ')}`);
    const unexpected = silentLog.lines.slice(logged).filter((l) => l.level === 'error');
    expect(unexpected.map((l) => l.message)).toEqual([]);
    expect(problems.slice(0, 25)).toEqual([]);
  }, 60_000);

  it('reach the upstreams only with names, tags and digests that passed the grammar', () => {
    const paths = [upA, upB, upC].flatMap((u) => u.requests.map((r) => r.path)).filter((p) => p !== '/v2/' && !p.startsWith('/token'));
    const bad = paths.filter((p) => !UPSTREAM_PATH.test(p) || p.split('?')[0].split('/').slice(2, -2).join('/').length > 255);
    expect(paths.length).toBeGreaterThan(100);
    expect(bad.slice(0, 10)).toEqual([]);
  });

  it('leave the store byte-identical: every SQLite row and every file under the data directory', () => {
    const after = snapshotStore(h.dbPath, h.dir);
    expect(after.schema).toEqual(before.schema);
    expect(after.files).toEqual(before.files);
    // Every table, listings included: tag list requests (paginated, repeated, hostile) keep nothing, and nothing
    // else a request did adds or rewrites rows.
    expect(after.tables).toEqual(before.tables);
  });

  it('still serve the cached images with the same digests and bytes, without asking an upstream', async () => {
    const was = upstreamCount();
    for (const m of pulled) {
      const res = await h.request('GET', `/v2/${m.name}/manifests/${m.ref}`);
      expect(res.headers['Docker-Content-Digest']).toBe(m.digest);
      expect(h.bodyOf(res)!.equals(m.body)).toBe(true);
    }
    for (const b of blobsPulled) expect((await getBlob(b.name, b.digest)).equals(b.bytes)).toBe(true);
    expect(upstreamCount()).toBe(was);
  });
});
