/**
 * What an operator sees of a real pull (issue 10): Debian's docker-registry as the upstream with its access log
 * on, the real local server with its Prometheus listener (PULLTHROUGH_METRICS_PORT) and DEBUG logging, skopeo as
 * the client. A cold then a warm pull: the request lines say `miss` then `hit` for the manifest and every blob,
 * `/metrics` counts the same, `pullthrough_upstream_requests_total` equals the requests the registry itself
 * logged, and the byte counters equal the image's size. Then the upstream is stopped: requests are `stale` or
 * `hit`, and the failure lines name the cause.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { scrape, sumOf } from '../support/prometheus-text.js';
import { pullImage, sha256 } from '../support/pull.js';
import { imageRef } from '../support/skopeo.js';
import { pickFreePort, readAccessLog, startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

let upstream: UpstreamRegistry;
let cache: LocalServer;
let image: PushedImage;
let metricsUrl: string;
/** Access-log entries of the pushes, before the cache started. */
let pushed: number;

type Line = Record<string, unknown> & { message: string; level: string };
const logLines = (): Line[] => readFileSync(cache.logPath, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line);
/** The cache's request lines of registry routes (not the `/_blobs/` byte transfers, not `/v2/`). */
const registryRequests = () => logLines().filter((l) => l.message === 'request' && /\/(manifests|blobs)\//.test(String(l.path)) && !String(l.path).startsWith('/_blobs/'));

/** Polls `read` until `done` holds (bounded): log lines reach the file through a pipe, access lines after the response. */
async function settle<T>(read: () => T, done: (v: T) => boolean): Promise<T> {
  let v = read();
  for (let i = 0; i < 100 && !done(v); i++) {
    await new Promise((r) => setTimeout(r, 50));
    v = read();
  }
  return v;
}

beforeAll(async () => {
  upstream = await startUpstreamRegistry({ accessLog: true });
  image = await pushSinglePlatformImage(upstream.url, 'team/seen', 'v1', { format: 'oci', arch: 'amd64', layerSources: ['/usr/share/common-licenses', '/usr/share/doc/libc6'] });
  pushed = readAccessLog(upstream).length;
  const metricsPort = await pickFreePort();
  metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
  cache = await startLocalServer(
    { rules: [{ prefix: 'local', upstream: upstream.url }, { prefix: 'recheck', upstream: upstream.url, ttlSeconds: 0 }] },
    { env: { PULLTHROUGH_METRICS_PORT: String(metricsPort), PULLTHROUGH_LOG_LEVEL: 'DEBUG' } },
  );
});

afterAll(async () => {
  await cache?.stop();
  await upstream?.stop();
});

describe('a cold then a warm pull, as the logs and the metrics tell it', () => {
  const imageBytes = () => image.manifest.length + image.blobs.reduce((a, b) => a + b.size, 0);

  it('request lines say miss, then hit, for the manifest and every blob; /metrics counts the same', async () => {
    const cold = await pullImage(imageRef(cache.url, 'local/team/seen', 'v1'));
    expect(sha256(cold.manifest)).toBe(image.digest);
    const afterCold = await settle(registryRequests, (l) => l.filter((x) => String(x.path).includes('/blobs/')).length >= image.blobs.length);
    expect(afterCold.length).toBeGreaterThanOrEqual(1 + image.blobs.length);
    expect(afterCold.map((l) => l.cache)).toEqual(afterCold.map(() => 'miss'));
    expect(afterCold.every((l) => l.rule === 'local')).toBe(true);
    // Each made its own upstream request, except a layer whose fill another layer's miss of this pull had already
    // started ahead (shared/registry/pull-hints.ts; skopeo here fetches layers concurrently): it joined that fill.
    // The fills started ahead are counted in /metrics (the next test), not in the line of the request that started them.
    const layers = new Set(image.blobs.slice(1).map((b) => b.digest));
    const joined = afterCold.filter((l) => Number(l.upstreamRequests) === 0);
    expect(joined.every((l) => layers.has(String(l.path).split('/').pop()!))).toBe(true);
    expect(joined.length).toBeLessThan(layers.size);

    const warm = await pullImage(imageRef(cache.url, 'local/team/seen', 'v1'));
    expect(warm.manifest.equals(cold.manifest)).toBe(true);
    const all = await settle(registryRequests, (l) => l.length >= 2 * afterCold.length);
    const warmLines = all.slice(afterCold.length);
    expect(warmLines.map((l) => [l.path, l.method])).toEqual(afterCold.map((l) => [l.path, l.method]));
    expect(warmLines.filter((l) => !(l.cache === 'hit' && l.upstreamRequests === 0)).map((l) => [l.path, l.cache, l.upstreamRequests])).toEqual([]);

    const samples = await scrape(metricsUrl);
    for (const kind of ['manifest', 'blob'] as const) {
      const lines = (cache: string) => all.filter((l) => l.cache === cache && String(l.path).includes(kind === 'manifest' ? '/manifests/' : '/blobs/')).length;
      expect(sumOf(samples, 'pullthrough_requests_total', { rule: 'local', kind, result: 'miss' }), kind).toBe(lines('miss'));
      expect(sumOf(samples, 'pullthrough_requests_total', { rule: 'local', kind, result: 'hit' }), kind).toBe(lines('hit'));
    }
    expect(sumOf(samples, 'pullthrough_requests_total', { kind: 'blob', result: 'hit' })).toBe(image.blobs.length);
  });

  it('upstream requests equal what the registry logged; upstream bytes equal the image, served bytes twice the image', async () => {
    const samples = await scrape(metricsUrl);
    const counted = sumOf(samples, 'pullthrough_upstream_requests_total');
    const logged = await settle(() => readAccessLog(upstream).slice(pushed), (l) => l.length >= counted);
    expect(counted).toBe(logged.length);
    expect(counted).toBeGreaterThanOrEqual(1 + image.blobs.length);
    for (const method of ['GET', 'HEAD']) {
      expect(sumOf(samples, 'pullthrough_upstream_requests_total', { method }), method).toBe(logged.filter((e) => e.method === method).length);
    }
    expect(sumOf(samples, 'pullthrough_upstream_requests_total', { status: '200' })).toBe(logged.filter((e) => e.status === 200).length);
    const bodyBytes = logged.filter((e) => e.method === 'GET').reduce((a, e) => a + e.bytes, 0);
    expect(sumOf(samples, 'pullthrough_upstream_bytes_total', { rule: 'local' })).toBe(bodyBytes);
    expect(bodyBytes).toBe(imageBytes());
    expect(sumOf(samples, 'pullthrough_served_bytes_total', { rule: 'local' })).toBe(2 * imageBytes());
    // The DEBUG line of every upstream request.
    const debug = logLines().filter((l) => l.message === 'upstream request');
    expect(debug.length).toBe(counted);
    expect(debug.every((l) => l.level === 'DEBUG' && l.host === `127.0.0.1:${upstream.port}` && typeof l.ms === 'number')).toBe(true);
  });
});

describe('the upstream stopped after caching', () => {
  it('requests are stale (a tag due for a re-check) or hit, and the failure lines name the cause', async () => {
    await pullImage(imageRef(cache.url, 'recheck/team/seen', 'v1'));
    const before = registryRequests().length;
    await upstream.stop();
    const offline = await pullImage(imageRef(cache.url, 'recheck/team/seen', 'v1'));
    expect(sha256(offline.manifest)).toBe(image.digest);
    const lines = (await settle(registryRequests, (l) => l.length >= before + 1 + image.blobs.length)).slice(before);
    expect(lines.filter((l) => String(l.path).includes('/manifests/')).map((l) => l.cache)).toEqual(['stale']);
    expect(lines.filter((l) => String(l.path).includes('/blobs/')).every((l) => l.cache === 'hit')).toBe(true);
    const failed = logLines().filter((l) => l.message === 'upstream request failed');
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(failed.every((l) => l.cause === 'connection refused' && l.code === 'ECONNREFUSED' && l.level === 'DEBUG')).toBe(true);
    const stale = logLines().filter((l) => l.message === 'serving stale tag');
    expect(String(stale.at(-1)?.reason)).toContain('connection refused (ECONNREFUSED)');
    const samples = await scrape(metricsUrl);
    expect(sumOf(samples, 'pullthrough_requests_total', { rule: 'recheck', kind: 'manifest', result: 'stale' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_upstream_requests_total', { rule: 'recheck', status: 'error' })).toBe(failed.length);
  });
});
