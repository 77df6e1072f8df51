/**
 * Upstream answers that are not valid do not get through, and a refusal that is permanent says so:
 * - a referrers index whose entries are not descriptors (`manifests: [null, 1, {"artifactType":{}}]`) is served
 *   without them (the valid entries stay), live and from the copy kept for an outage;
 * - a manifest over `maxManifestBytes` is a permanent refusal (502 `MANIFEST_INVALID` naming the limit),
 *   not a 503 telling clients to retry, and it is remembered for the rule's `negativeCacheSeconds`.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isDescriptor } from '../../shared/oci/descriptor.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const D = (c: string) => `sha256:${c.repeat(64)}`;
const VALID = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: D('a'), size: 512, artifactType: 'application/spdx+json' };

describe('isDescriptor (image spec "Descriptors")', () => {
  it.each([
    [VALID, true],
    [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: D('b'), size: 0, annotations: { 'org.opencontainers.image.created': '2024' } }, true],
    [null, false],
    [1, false],
    ['x', false],
    [[VALID], false],
    [{ artifactType: {} }, false],
    [{ ...VALID, artifactType: {} }, false],
    [{ ...VALID, mediaType: 7 }, false],
    [{ ...VALID, mediaType: '' }, false],
    [{ ...VALID, digest: 'sha256:xyz' }, false],
    [{ ...VALID, size: -1 }, false],
    [{ ...VALID, size: 1.5 }, false],
    [{ ...VALID, size: '512' }, false],
    [{ ...VALID, annotations: { a: 1 } }, false],
    [{ ...VALID, annotations: [] }, false],
  ])('%j → %s', (value, expected) => expect(isDescriptor(value)).toBe(expected));
});

describe('referrers entries that are not descriptors', () => {
  it('are dropped from the served index (live and kept for an outage); the valid entries stay', async () => {
    let down = false;
    const seen: string[] = [];
    const up = await startFakeUpstream();
    cleanups.push(() => up.close());
    const img = seedImage(up, 'app', 'v1', [Buffer.from('image')]);
    // A front that answers referrers itself (with junk entries) and passes everything else to the fake registry.
    const front = createServer((req, res) => {
      seen.push(req.url ?? '');
      if (down) return void res.writeHead(503).end();
      if (req.url?.includes('/referrers/')) {
        const body = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [null, 1, { artifactType: {} }, VALID] });
        return void res.writeHead(200, { 'Content-Type': 'application/vnd.oci.image.index.v1+json' }).end(body);
      }
      void fetch(`${up.url}${req.url}`, { method: req.method }).then(async (r) => {
        res.writeHead(r.status, Object.fromEntries(r.headers)).end(Buffer.from(await r.arrayBuffer()));
      });
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => (front.closeAllConnections(), front.close(() => r()))));
    const h = await createHarness([{ prefix: 'p', upstream: `http://127.0.0.1:${(front.address() as AddressInfo).port}` }]);
    cleanups.push(() => h.close());
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(200); // kept only for cached subjects

    const live = await h.request('GET', `/v2/p/app/referrers/${img.digest}`);
    expect(live.status).toBe(200);
    expect(h.jsonOf(live)).toEqual({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [VALID] });
    down = true;
    const kept = await h.request('GET', `/v2/p/app/referrers/${img.digest}`);
    expect(kept.status).toBe(200);
    expect(h.jsonOf(kept).manifests).toEqual([VALID]);
    expect(seen.filter((u) => u.includes('/referrers/'))).toHaveLength(2);
  });
});

describe('a manifest over maxManifestBytes', () => {
  let up: FakeUpstream;
  async function setUp(slowBody?: FakeUpstream['faults']['slowBody']) {
    up = await startFakeUpstream();
    cleanups.push(() => up.close());
    const img = seedImage(up, 'app', 'v1', [Buffer.from('layer')]);
    expect(img.body.length).toBeGreaterThan(200);
    if (slowBody) up.faults.slowBody = slowBody;
    const h = await createHarness([{ prefix: 'p', upstream: up.url, negativeCacheSeconds: 60 }], { maxManifestBytes: 200 } as never);
    cleanups.push(() => h.close());
    return { h, img };
  }

  it.each([
    ['with a Content-Length', undefined],
    ['sent chunked (no Content-Length: refused once the body passes the limit)', { chunkBytes: 64, pauseMs: 0, noLength: true, kind: 'manifest' as const }],
  ])('%s: 502 MANIFEST_INVALID naming the limit (not a 503 to retry), remembered for negativeCacheSeconds', async (_name, slowBody) => {
    const { h, img } = await setUp(slowBody);
    for (const reference of ['v1', img.digest]) {
      for (let i = 0; i < 3; i++) {
        const res = await h.request('GET', `/v2/p/app/manifests/${reference}`);
        expect(res.status, reference).toBe(502);
        expect(res.headers['Retry-After']).toBeUndefined();
        expect(h.jsonOf(res).errors[0]).toMatchObject({ code: 'MANIFEST_INVALID', message: 'manifest larger than maxManifestBytes (200 bytes)' });
      }
    }
    // Once per reference: the refusal is remembered.
    expect(up.count({ kind: 'manifest' })).toBe(2);
    h.clock.now += 61_000;
    expect((await h.request('GET', '/v2/p/app/manifests/v1')).status).toBe(502);
    expect(up.count({ kind: 'manifest' })).toBe(3);
    expect(await h.index.getTag('p/app', 'v1')).toBeUndefined();
  });
});
