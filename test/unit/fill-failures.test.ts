/**
 * What counts as a failed blob fill (`pullthrough_fill_failures_total`, `FillFailures` on AWS, which pages): only
 * a fill of a blob the upstream has that then did not complete (unreachable, wrong bytes, storage full). A blob
 * the upstream does not have (404, or the 401/403 registries answer for what does not exist) is an ordinary
 * `404 BLOB_UNKNOWN`: no failure counted, one log line saying so. Runs the registry on the embedded stores against
 * the in-process fake upstream with a recording metrics sink; the fake's `status`/`wrongBytes` switches stand in
 * for an upstream that cannot be made to fail on demand.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createHarness, silentLog } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { recordingMetrics } from '../support/recording-metrics.js';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
const rec = recordingMetrics();
const unknown = `sha256:${'ab'.repeat(32)}`;

beforeAll(async () => {
  up = await startFakeUpstream();
  h = await createHarness([{ prefix: 'up', upstream: up.url, negativeCacheSeconds: 0 }], { metrics: rec.metrics, blobFill: { waitSeconds: 5 } });
});
afterAll(async () => {
  h.close();
  await up.close();
});
beforeEach(() => {
  rec.reset();
  up.reset();
  up.faults.status = undefined;
  up.faults.wrongBytes = undefined;
  silentLog.lines.length = 0;
});

const fills = () => rec.events.fill.map(([e]) => ({ rule: e.rule, ok: e.ok }));
const linesOf = (message: string) => silentLog.lines.filter((l) => l.message === message).map((l) => ({ level: l.level, ...(l.extra[0] as object) }));

describe('fill failures', () => {
  it.each([404, 401, 403])('a blob the upstream answers %i for is BLOB_UNKNOWN, logged, not a failed fill', async (status) => {
    if (status !== 404) up.faults.status = { kind: 'blob', code: status };
    const res = await h.request('GET', `/v2/up/app/blobs/${unknown}`);
    expect(res.status).toBe(404);
    expect(h.jsonOf(res).errors[0].code).toBe('BLOB_UNKNOWN');
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
    expect(fills()).toEqual([]);
    expect(linesOf('blob fill failed')).toEqual([]);
    expect(linesOf('blob not found upstream')).toEqual([
      { level: 'info', event: 'fill-not-found', name: 'up/app', digest: unknown, status, reason: `blob GET: upstream answered ${status}` },
    ]);
  });

  it.each([
    ['an upstream answering 503', 503, () => void (up.faults.status = { kind: 'blob', code: 503 })],
    ['wrong bytes from the upstream', 502, () => void (up.faults.wrongBytes = 'blobs')],
  ])('%s: one failed fill, logged with its reason', async (_, status, fault) => {
    const img = seedImage(up, 'app', `v${status}`, [Buffer.from(`layer that will fail with ${status}`)]);
    fault();
    const res = await h.request('GET', `/v2/up/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(status);
    expect(fills()).toEqual([{ rule: 'up', ok: false }]);
    expect(linesOf('blob fill failed')).toMatchObject([{ level: 'warn', event: 'fill-failed', name: 'up/app', digest: img.layerDigests[0], reason: expect.any(String) }]);
  });

  it('a blob the upstream has counts one committed fill and no failure', async () => {
    const img = seedImage(up, 'app', 'v3', [Buffer.from('a good layer')]);
    const res = await h.request('GET', `/v2/up/app/blobs/${img.layerDigests[0]}`);
    expect(res.status).toBe(307);
    expect(fills()).toEqual([{ rule: 'up', ok: true }]);
    expect(linesOf('blob fill failed')).toEqual([]);
  });
});
