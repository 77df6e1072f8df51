/**
 * A tag the upstream moved is published as an EventBridge `Tag Moved` event (PULLTHROUGH_EVENT_BUS), through the
 * real runtime and the AWS SDK, against a loopback stand-in for EventBridge's PutEvents (no local EventBridge
 * exists; the stand-in only records what the SDK sends).
 */
import { mkdtempSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, readEnvironment } from '../../shared/config.js';
import { buildRuntime, type Runtime } from '../../shared/runtime.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';

let up: FakeUpstream;
let events: Server;
let runtime: Runtime;
const received: Array<{ target: string; body: { Entries: Array<{ EventBusName: string; Source: string; DetailType: string; Detail: string }> } }> = [];

beforeAll(async () => {
  up = await startFakeUpstream();
  events = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ target: String(req.headers['x-amz-target']), body: JSON.parse(Buffer.concat(chunks).toString()) });
      res.writeHead(200, { 'Content-Type': 'application/x-amz-json-1.1' });
      res.end(JSON.stringify({ FailedEntryCount: 0, Entries: [{ EventId: 'e-1' }] }));
    });
  });
  await new Promise<void>((r) => events.listen(0, '127.0.0.1', () => r()));
  const endpoint = `http://127.0.0.1:${(events.address() as AddressInfo).port}`;
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_EVENTBRIDGE: endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    AWS_EC2_METADATA_DISABLED: 'true',
  });
  const env = {
    ...readEnvironment({ PULLTHROUGH_DATA_DIR: mkdtempSync(join(tmpdir(), 'pt-events-')), PULLTHROUGH_LOG_LEVEL: 'SILENT' }),
    eventBus: 'team-bus',
  };
  runtime = await buildRuntime(env, parseConfig({ rules: [{ prefix: 'p', upstream: up.url, ttlSeconds: 0 }] }));
});
afterAll(async () => {
  runtime?.close();
  await up?.close();
  await new Promise<void>((r) => events.close(() => r()));
});

const get = (path: string) => runtime.app({ method: 'GET', path, query: new URLSearchParams(), headers: {} });

describe('Tag Moved events', () => {
  it('publishes one event per digest change, with rule, name, tag and both digests', async () => {
    const old = seedImage(up, 'app', 'latest', [Buffer.from('old')]);
    expect((await get('/v2/p/app/manifests/latest')).headers['Docker-Content-Digest']).toBe(old.digest);
    expect(received).toEqual([]);
    const moved = seedImage(up, 'app', 'latest', [Buffer.from('new')]);
    expect((await get('/v2/p/app/manifests/latest')).headers['Docker-Content-Digest']).toBe(moved.digest);
    expect(received).toHaveLength(1);
    expect(received[0].target).toBe('AWSEvents.PutEvents');
    const [entry] = received[0].body.Entries;
    expect(entry).toMatchObject({ EventBusName: 'team-bus', Source: 'pullthrough', DetailType: 'Tag Moved' });
    expect(JSON.parse(entry.Detail)).toEqual({ rule: 'p', name: 'p/app', tag: 'latest', oldDigest: old.digest, newDigest: moved.digest });
    // Unchanged on the next check: no event.
    await get('/v2/p/app/manifests/latest');
    expect(received).toHaveLength(1);
  });
});
