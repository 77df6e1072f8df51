/**
 * From an attacker review (these failed before the fix): a rule's upstream that answers a blob GET of a digest it does not have with a huge
 * announced `Content-Length` and then a byte now and then (under the 60 s stall timer and well above nothing) holds
 * that digest's fill in this process until `deadlineGraceSeconds` + announced size / `minBytesPerSecond` (6 GB at the
 * default 64 KiB/s: about 25 h). Every other name's request for the digest finds that fill running, proves its own
 * upstream's copy against the size the hostile fill announced (which the honest bytes never match: 502
 * DIGEST_INVALID), or waits on it (503): another rule's honest pull of that layer failed for as long. Now the size the
 * honest name's own upstream's bytes hashed holds that fill (blob-fill.ts `RunningFill.holdTo`). The hostile
 * upstream here is a plain HTTP server (no real registry sends a lying length); the honest one is the fake upstream.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterEach, expect, it } from 'vitest';
import type { Digest } from '../../shared/oci/digest.js';
import { createHarness, silentLog } from '../support/harness.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let honest: FakeUpstream;
let hostile: http.Server;
let h: Awaited<ReturnType<typeof createHarness>>;
afterEach(async () => {
  hostile?.closeAllConnections();
  await new Promise((r) => hostile?.close(r));
  await honest?.close();
  await new Promise((r) => setTimeout(r, 50));
  h?.close();
});

/**
 * The honest upstream with `team/app` (one 64 KiB layer) and the hostile one answering every blob GET as above, or
 * (`unsized`) with no `Content-Length` (chunked) and 128 KiB, twice the digest's size, or (`unsized-short`) 1 byte,
 * then holding the connection.
 */
async function setUp(hostileAnswer: 'huge' | 'unsized' | 'unsized-short' = 'huge') {
  honest = await startFakeUpstream();
  const layer = randomBytes(64 * 1024);
  const digest = seedImage(honest, 'team/app', 'v1', [layer]).layerDigests[0] as Digest;
  hostile = http.createServer((req, res) => {
    if (!req.url?.includes('/blobs/')) return void res.writeHead(req.url === '/v2/' ? 200 : 404).end('{}');
    res.writeHead(200, { ...(hostileAnswer === 'huge' ? { 'Content-Length': '6000000000' } : {}), 'Docker-Content-Digest': digest });
    if (req.method === 'HEAD') return void res.end();
    // Then nothing more within this test: the fill stays "transferring".
    res.write(hostileAnswer === 'unsized' ? randomBytes(128 * 1024) : Buffer.alloc(1));
  });
  await new Promise<void>((r) => hostile.listen(0, '127.0.0.1', r));
  h = await createHarness(
    [
      { prefix: 'evil', upstream: `http://127.0.0.1:${(hostile.address() as AddressInfo).port}` },
      { prefix: 'team', upstream: honest.url },
    ],
    { blobFill: { waitSeconds: 1, maxHops: 0 } },
  );
  return { layer, digest };
}

it("a hostile upstream's endless fill of a digest does not keep another rule's honest pull of it failing", async () => {
  const { layer, digest } = await setUp();
  h.blobs.enableStreamWhileFilling();
  expect((await h.request('GET', `/v2/evil/x/blobs/${digest}`)).status).toBe(307); // the hostile fill runs
  // The honest rule's pull of the same layer, retried as a client would (each answer is bounded by waitSeconds).
  const statuses: number[] = [];
  let served: Buffer | undefined;
  for (let i = 0; i < 3 && !served; i++) {
    const res = await h.request('GET', `/v2/team/team/app/blobs/${digest}`);
    statuses.push(res.status);
    if (res.status !== 307) continue;
    await h.blobs.openInProgress(digest)?.whenCommitted();
    served = h.readLocation(res.headers.Location);
  }
  expect(statuses).toContain(307);
  expect(served?.equals(layer)).toBe(true);
}, 30_000);

it('waiting for the commit (no streaming): the honest proof is not held to the announced 6 GB, the hostile fill is abandoned at once, the honest fill commits', async () => {
  const { layer, digest } = await setUp();
  silentLog.lines.length = 0;
  // The hostile fill starts (its request gives up waiting for the commit), and is writing: its size is announced.
  expect((await h.request('GET', `/v2/evil/x/blobs/${digest}`)).status).toBe(503);
  for (let i = 0; i < 100 && !h.blobs.openInProgress(digest); i++) await new Promise((r) => setTimeout(r, 20));
  expect(h.blobs.openInProgress(digest)).toBeDefined();
  const res = await h.request('GET', `/v2/team/team/app/blobs/${digest}`);
  expect(res.status).toBe(307);
  expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
  const abandoned = silentLog.lines.filter((l) => (l.extra[0] as { event?: string } | undefined)?.event === 'fill-abandoned');
  expect(abandoned.map((l) => l.extra[0])).toEqual([
    expect.objectContaining({ name: 'evil/x', digest, reason: "its upstream announced 6000000000 bytes; team/team/app's upstream's bytes hashed to the digest in 65536" }),
  ]);
  expect(await h.index.isLinked('team/team/app', digest)).toBe(true);
  expect(await h.index.isLinked('evil/x', digest)).toBe(false);
}, 30_000);

it('a name already linked to the digest (its blob not stored) also refutes the hostile fill instead of waiting on it', async () => {
  // From a review: the refutation needs `proof.size`, which only a proof by the bytes in this request carries. A
  // name whose link exists while the blob is not stored got its proof from the link (no size) and waited on the
  // hostile fill. Linked-but-not-stored is an ordinary state: links drop only with their repository while GC sweeps
  // unreferenced blobs, and a proof by the bytes links the name before its own fill commits (or fails).
  const { layer, digest } = await setUp();
  await h.index.link('team/team/app', digest);
  expect(await h.blobs.stat(digest)).toBeUndefined();
  expect((await h.request('GET', `/v2/evil/x/blobs/${digest}`)).status).toBe(503);
  for (let i = 0; i < 100 && !h.blobs.openInProgress(digest); i++) await new Promise((r) => setTimeout(r, 20));
  expect(h.blobs.openInProgress(digest)).toBeDefined(); // the hostile fill is writing (6 GB announced)
  const res = await h.request('GET', `/v2/team/team/app/blobs/${digest}`);
  expect(res.status).toBe(307);
  expect(h.readLocation(res.headers.Location).equals(layer)).toBe(true);
}, 30_000);

it("an unsized hostile fill holding more bytes than the digest has is abandoned by another rule's proof, whose fill then commits", async () => {
  // From an attacker review: a fill whose upstream announces no size was never refuted, even once it had received
  // more bytes than the digest can have; its only bounds, fillDeadline on the bytes so far and rateWindow, an
  // upstream sending at minBytesPerSecond passes forever. Now the size the honest proof hashed holds it (holdTo).
  const { layer, digest } = await setUp('unsized');
  silentLog.lines.length = 0;
  expect((await h.request('GET', `/v2/evil/x/blobs/${digest}`)).status).toBe(503); // the hostile fill runs
  const tail = h.blobs.openInProgress(digest);
  expect(tail).toBeDefined();
  for (let i = 0; i < 100 && !silentLog.lines.length; i++) await new Promise((r) => setTimeout(r, 20));
  // The honest rule's pull, retried as a client would (each answer bounded by waitSeconds).
  const statuses: number[] = [];
  let served: Buffer | undefined;
  for (let i = 0; i < 3 && !served; i++) {
    const res = await h.request('GET', `/v2/team/team/app/blobs/${digest}`);
    statuses.push(res.status);
    if (res.status === 307) served = h.readLocation(res.headers.Location);
  }
  const abandoned = silentLog.lines.filter((l) => (l.extra[0] as { event?: string } | undefined)?.event === 'fill-abandoned');
  expect({ statuses, abandoned: abandoned.length }).toEqual({ statuses: [307], abandoned: 1 });
  expect(served?.equals(layer)).toBe(true);
}, 30_000);

it("a linked name's pulls during another rule's unsized fill download the blob from its upstream at most once", async () => {
  // From an attacker review: a linked name re-proved by its upstream before each join and forgot the proof; a fill
  // that announced no size can never be matched by a HEAD, so every pull downloaded the whole blob again. Once one
  // proof's size holds that fill (heldTo), the link does.
  const { digest } = await setUp('unsized-short');
  await h.index.link('team/team/app', digest); // linked, not stored (GC swept it; or a proof before a failed fill)
  expect((await h.request('GET', `/v2/evil/x/blobs/${digest}`)).status).toBe(503); // the hostile fill runs
  expect(h.blobs.openInProgress(digest)).toBeDefined();
  honest.reset();
  const statuses: number[] = [];
  for (let i = 0; i < 3; i++) statuses.push((await h.request('GET', `/v2/team/team/app/blobs/${digest}`)).status);
  // Each pull waits its budget on the hostile fill (a known limit, README) and answers 503 (maxHops 0).
  expect(statuses).toEqual([503, 503, 503]);
  expect(honest.count({ method: 'GET', kind: 'blob' })).toBeLessThanOrEqual(1);
}, 30_000);
