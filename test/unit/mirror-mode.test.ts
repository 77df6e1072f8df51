/**
 * Mirror mode: containerd's hosts.toml mirrors send `?ns=<registry host>` with unprefixed names; Docker's
 * registry-mirrors sends bare Docker Hub names. Both land on the same cache entries as prefixed names.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let hub: FakeUpstream;
let other: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;

beforeEach(async () => {
  hub = await startFakeUpstream();
  other = await startFakeUpstream();
  h = await createHarness(
    [
      { prefix: 'docker-hub', upstream: hub.url, dockerHubLibrary: true },
      { prefix: 'quay', upstream: other.url },
    ],
    { defaultRule: 'docker-hub' },
  );
});
afterEach(async () => {
  h.close();
  await hub.close();
  await other.close();
});

describe('mirror mode', () => {
  it('?ns=<upstream host> selects the rule by host, and shares the cache entry with the prefixed name', async () => {
    const img = seedImage(other, 'prometheus/node-exporter', 'v1', [Buffer.from('x')]);
    const viaNs = await h.request('GET', `/v2/prometheus/node-exporter/manifests/v1?ns=${other.host}`);
    expect(viaNs.status).toBe(200);
    expect(viaNs.headers['Docker-Content-Digest']).toBe(img.digest);
    other.reset();
    const prefixed = await h.request('GET', '/v2/quay/prometheus/node-exporter/manifests/v1');
    expect(prefixed.headers['Docker-Content-Digest']).toBe(img.digest);
    expect(other.count()).toBe(0);
    // ns is never forwarded upstream.
    expect(other.requests.every((r) => !r.path.includes('ns='))).toBe(true);
  });

  it('?ns=docker.io selects the Docker Hub rule; one-part names get library/', async () => {
    const img = seedImage(hub, 'library/alpine', '3.20', [Buffer.from('alpine')]);
    const res = await h.request('GET', '/v2/alpine/manifests/3.20?ns=docker.io');
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    hub.reset();
    for (const path of ['/v2/library/alpine/manifests/3.20?ns=docker.io', '/v2/docker-hub/alpine/manifests/3.20', '/v2/docker-hub/library/alpine/manifests/3.20']) {
      expect((await h.request('GET', path)).headers['Docker-Content-Digest']).toBe(img.digest);
    }
    expect(hub.count()).toBe(0);
    expect(await h.index.listRepositories()).toEqual(['docker-hub/library/alpine']);
  });

  it('bare names (Docker registry-mirrors) go to the default rule', async () => {
    const img = seedImage(hub, 'library/nginx', '1.27', [Buffer.from('nginx')]);
    const res = await h.request('GET', '/v2/library/nginx/manifests/1.27');
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    const blob = await h.request('GET', `/v2/library/nginx/blobs/${img.layerDigests[0]}`);
    expect(blob.status).toBe(307);
    const tags = await h.request('GET', '/v2/library/nginx/tags/list?n=1');
    expect(h.jsonOf(tags)).toEqual({ name: 'library/nginx', tags: ['1.27'] });
  });

  it('an ns no rule serves is NAME_UNKNOWN', async () => {
    const res = await h.request('GET', '/v2/foo/bar/manifests/v1?ns=registry.example.com');
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('NAME_UNKNOWN');
  });

  it('keeps ns in hop redirects so mirror clients come back to the same entry', async () => {
    h.close();
    h = await createHarness([{ prefix: 'quay', upstream: other.url }], { blobFill: { waitSeconds: 0.05, maxHops: 3 } });
    const img = seedImage(other, 'team/app', 'v1', [Buffer.from('slow')]);
    other.faults.delayMs = 400;
    const res = await h.request('GET', `/v2/team/app/blobs/${img.layerDigests[0]}?ns=${other.host}`);
    expect(res.status).toBe(307);
    expect(res.headers.Location).toBe(`/v2/team/app/blobs/${img.layerDigests[0]}?ns=${encodeURIComponent(other.host)}&pt-hop=1`);
    await new Promise((r) => setTimeout(r, 500));
  });
});
