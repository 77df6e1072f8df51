/**
 * What bounds a fill: its deadline (a trickling upstream is cut off and everything it held released) and storage
 * exhaustion (a full disk answers 503 with a log line, and the blob backs off instead of being fetched from the
 * upstream on every retry). The trickle is the fake upstream's `slowBody` switch; the full disk is an injected
 * `ENOSPC` from the file writes (or a `statfs` reporting no room, or SQLite's `SQLITE_FULL`), since a test cannot
 * count on mounting a small tmpfs.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, readdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { createHarness, silentLog } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let up: FakeUpstream;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  vi.restoreAllMocks();
  vi.useRealTimers();
  await up?.close();
  await sleep(50);
  h?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
const events = (event: string) => silentLog.lines.filter((l) => (l.extra[0] as { event?: string } | undefined)?.event === event);

async function setUp(blobFill: NonNullable<NonNullable<Parameters<typeof createHarness>[1]>['blobFill']> = {}, layer = randomBytes(4096)) {
  up = await startFakeUpstream();
  h = await createHarness([{ prefix: 'p', upstream: up.url }], { blobFill: { waitSeconds: 5, ...blobFill } });
  const img = seedImage(up, 'app', 'v1', [layer]);
  silentLog.lines.length = 0;
  return { layer, digest: img.layerDigests[0] as Digest, key: `blob:${img.layerDigests[0]}` };
}

/** Waits (bounded) until nothing of a fill is left: no lease, no temp file, no upstream response open. */
async function released(key: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (!(await h.index.getLease(key)) && readdirSync(join(h.dir, 'tmp')).length === 0 && up.inFlight === 0) return;
    await sleep(20);
  }
  throw new Error(`fill not released: lease ${JSON.stringify(await h.index.getLease(key))}, tmp ${readdirSync(join(h.dir, 'tmp'))}, upstream in flight ${up.inFlight}`);
}

describe('the fill deadline (deadlineGraceSeconds + size / minBytesPerSecond)', () => {
  const LIMITS = { minBytesPerSecond: 1_000_000, deadlineGraceSeconds: 1, staleLeaseSeconds: 0.2 };

  it('a healthy fill within it commits', async () => {
    const { layer, digest } = await setUp(LIMITS);
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.status).toBe(307);
    expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
  });

  for (const noLength of [false, true]) {
    it(`a trickling upstream (1 byte per 20 ms${noLength ? ', no Content-Length' : ''}) is cut off: 503, lease, temp file and connection released`, async () => {
      const { digest, key } = await setUp(LIMITS);
      up.faults.slowBody = { chunkBytes: 1, pauseMs: 20, noLength }; // the 4 KiB would take 80 s
      const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
      expect(res.status).toBe(503);
      expect(h.jsonOf(res).errors[0].code).toBe('UNAVAILABLE');
      await released(key);
      expect(await h.blobs.stat(digest)).toBeUndefined();
      const abandoned = events('fill-abandoned');
      expect(abandoned).toHaveLength(1);
      expect((abandoned[0].extra[0] as { reason: string }).reason).toMatch(/deadline/);
    });
  }
});

describe('a full disk', () => {
  it('mid-write (ENOSPC): 503 with Retry-After and a storage-full log line; retries back off instead of refetching', async () => {
    const { layer, digest, key } = await setUp();
    const probe = await fsp.open(join(h.dir, 'probe'), 'w');
    const fileHandle = Object.getPrototypeOf(probe) as { write: () => Promise<never>; writev: () => Promise<never> };
    await probe.close();
    vi.spyOn(fileHandle, 'write').mockImplementation(async () => Promise.reject(enospc()));
    vi.spyOn(fileHandle, 'writev').mockImplementation(async () => Promise.reject(enospc()));
    const first = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(first.status).toBe(503);
    expect(h.jsonOf(first).errors[0].code).toBe('UNAVAILABLE');
    expect(first.headers['Retry-After']).toBe('10');
    await released(key);
    for (let i = 0; i < 5; i++) {
      const retry = await h.request('GET', `/v2/p/app/blobs/${digest}`);
      expect(retry.status).toBe(503);
      expect(Number(retry.headers['Retry-After'])).toBeLessThanOrEqual(10);
    }
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(1);
    const full = events('storage-full');
    expect(full).toHaveLength(1);
    expect(full[0].level).toBe('error');
    expect(full[0].extra[0]).toMatchObject({ digest, failures: 1, backoffSeconds: 10 });

    // Past the window one retry goes to the upstream again; failing again doubles the window.
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 11_000);
    const again = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(again.headers['Retry-After']).toBe('20');
    expect(up.count({ method: 'GET', kind: 'blob' })).toBe(2);
    // Space is back: once the window passed, the fill commits.
    vi.restoreAllMocks();
    vi.setSystemTime(Date.now() + 21_000);
    const ok = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(ok.status).toBe(307);
    expect(h.readLocation(ok.headers.Location).equals(layer)).toBe(true);
  });

  it('known size and no room (statfs): refused before the first byte, so no client is ever redirected to it', async () => {
    const { digest, key } = await setUp();
    h.blobs.enableStreamWhileFilling();
    const statfs = vi.spyOn(fsp, 'statfs').mockResolvedValue({ bavail: 100, bsize: 4096 } as Awaited<ReturnType<typeof fsp.statfs>>);
    const res = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(res.status).toBe(503);
    expect(res.headers.Location).toBeUndefined();
    expect(statfs).toHaveBeenCalled();
    await released(key);
    // The size is the upstream's claim, not bytes the store failed to write: no storage-full alarm.
    expect(events('storage-full')).toHaveLength(0);
    expect(events('fill-no-room')).toHaveLength(1);
  });

  it('a manifest that cannot be stored (SQLITE_FULL) answers 503 UNAVAILABLE, not 500 UNKNOWN', async () => {
    await setUp();
    vi.spyOn(h.index, 'putManifest').mockRejectedValue(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' }));
    const res = await h.request('GET', '/v2/p/app/manifests/v1');
    expect(res.status).toBe(503);
    expect(h.jsonOf(res).errors[0].code).toBe('UNAVAILABLE');
    expect(res.headers['Retry-After']).toBe('30');
    expect(events('storage-full')).toHaveLength(1);
    expect(silentLog.lines.filter((l) => l.message === 'unexpected error')).toEqual([]);
  });
});

/**
 * An upstream that answers every blob request 200 announcing 900 TB (`Content-Length: 900000000000000`) and then
 * sends one byte and stalls: a hostile or broken registry a rule may point at. No store has room for that size.
 */
async function startLyingUpstream(): Promise<{ url: string; blobGets: () => number; close(): Promise<void> }> {
  let gets = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((req, res) => {
    if (!/\/blobs\/sha256:/.test(req.url ?? '')) {
      res.writeHead(200, { 'Content-Type': 'application/json', 'Docker-Distribution-API-Version': 'registry/2.0' });
      return void res.end('{}');
    }
    const digest = /sha256:[0-9a-f]{64}/.exec(req.url ?? '')?.[0] ?? '';
    res.writeHead(200, { 'Content-Length': '900000000000000', 'Docker-Content-Digest': digest, 'Content-Type': 'application/octet-stream' });
    if (req.method === 'HEAD') return void res.end();
    gets++;
    res.write(Buffer.alloc(1));
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    blobGets: () => gets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('an upstream announcing a size no store has room for', () => {
  let liar: Awaited<ReturnType<typeof startLyingUpstream>> | undefined;
  afterEach(async () => {
    await liar?.close();
    liar = undefined;
  });

  it('refuses that name only (503, a fill-no-room warning): another rule fills the digest, and no storage-full alarm', async () => {
    liar = await startLyingUpstream();
    up = await startFakeUpstream();
    h = await createHarness([{ prefix: 'p', upstream: up.url }, { prefix: 'liar', upstream: liar.url }], { blobFill: { waitSeconds: 5 } });
    const layer = randomBytes(4096);
    const digest = seedImage(up, 'app', 'v1', [layer]).layerDigests[0] as Digest;
    silentLog.lines.length = 0;

    const lied = await h.request('GET', `/v2/liar/probe/blobs/${digest}`);
    expect(lied.status).toBe(503);
    expect(h.jsonOf(lied).errors[0].code).toBe('UNAVAILABLE');
    expect(lied.headers['Retry-After']).toBe('10');
    expect(liar.blobGets()).toBe(1);
    await released(`blob:${digest}`);
    // Its retries back off (no second download from that upstream)...
    expect((await h.request('GET', `/v2/liar/probe/blobs/${digest}`)).status).toBe(503);
    expect(liar.blobGets()).toBe(1);
    // ...while the honest rule's pull of the same digest is not held up by it.
    const honest = await h.request('GET', `/v2/p/app/blobs/${digest}`);
    expect(honest.status).toBe(307);
    expect(h.readLocation(honest.headers.Location).equals(layer)).toBe(true);

    expect(events('storage-full')).toEqual([]);
    expect(silentLog.lines.filter((l) => l.level === 'error')).toEqual([]);
    const noRoom = events('fill-no-room');
    expect(noRoom).toHaveLength(1);
    expect(noRoom[0].level).toBe('warn');
    expect(noRoom[0].extra[0]).toMatchObject({ name: 'liar/probe', digest, announcedBytes: 900_000_000_000_000, failures: 1, backoffSeconds: 10 });
  });
});
