/**
 * The AWS backend end to end, on local stand-ins: the real local server with PULLTHROUGH_BACKEND=aws against
 * DynamoDB Local (AWS's own jar) and s3rver, Debian's docker-registry as the upstream behind a counting proxy,
 * and skopeo as the client. Blobs must arrive through 307s to presigned s3rver URLs.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTable } from '../../shared/store/dynamodb-index.js';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import { startDynamoDbLocal, type DynamoDbLocal } from '../support/dynamodb-local.js';
import { pushMultiArchImage, pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { awsBackendEnv, createBucket, s3ClientFor, startS3rver, S3RVER_CREDENTIALS, type S3rverInstance } from '../support/s3rver.js';
import { pullImage, sha256 } from '../support/pull.js';
import { imageRef } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const ROOT = resolve(import.meta.dirname, '../..');
const TABLE = 'pullthrough-e2e';
const BUCKET = 'pullthrough-e2e';

let dynamo: DynamoDbLocal;
let s3: S3rverInstance;
let upstream: UpstreamRegistry;
let proxy: CountingProxy;
let cache: LocalServer;
let multi: PushedImage;
let crowd: PushedImage;

const pull = (ref: string, arch?: string) => pullImage(ref, { arch, dirPrefix: 'pull-aws-' });

beforeAll(async () => {
  [dynamo, s3, upstream] = await Promise.all([startDynamoDbLocal(), startS3rver(), startUpstreamRegistry()]);
  await createTable(new DynamoDBClient({ endpoint: dynamo.endpoint, region: 'us-east-1', credentials: S3RVER_CREDENTIALS }), TABLE);
  await createBucket(s3ClientFor(s3.endpoint), BUCKET);
  multi = await pushMultiArchImage(upstream.url, 'team/multi', 'v1', { format: 'oci' });
  crowd = await pushSinglePlatformImage(upstream.url, 'team/crowd', 'v1', {
    format: 'oci',
    arch: 'amd64',
    layerSources: ['/usr/share/common-licenses', '/usr/share/zoneinfo', '/usr/share/doc/libc6'],
  });
  proxy = await startCountingProxy(upstream.url);
  cache = await startLocalServer({ rules: [{ prefix: 'local', upstream: proxy.url }] }, { env: awsEnv() });
}, 120_000);

/** The settings that put the server (and the CLI) on the AWS backend: DynamoDB Local and s3rver. */
function awsEnv(): Record<string, string> {
  return awsBackendEnv({ dynamodb: dynamo.endpoint, s3: s3.endpoint, table: TABLE, bucket: BUCKET });
}

afterAll(async () => {
  await cache?.stop();
  await proxy?.stop();
  await upstream?.stop();
  await s3?.stop();
  await dynamo?.stop();
});

describe('pulling through the AWS backend (DynamoDB Local + s3rver)', () => {
  for (const arch of ['amd64', 'arm64'] as const) {
    it(`pulls the ${arch} image of an OCI index with every digest equal to the upstream's`, async () => {
      const child = multi.children!.find((c) => c.platform?.architecture === arch)!;
      const got = await pull(imageRef(cache.url, 'local/team/multi', 'v1'), arch);
      expect(got.manifest.equals(child.manifest)).toBe(true);
      expect(got.blobs.map((b) => b.name).sort()).toEqual(child.blobs.map((b) => b.digest).sort());
      for (const b of got.blobs) expect(b.actual).toBe(b.name);
    });
  }

  it('answers blob GETs with 307 to a presigned S3 URL, and HEAD with the size from the record', async () => {
    const layer = multi.children![0].blobs.at(-1)!;
    const res = await fetch(`${cache.url}/v2/local/team/multi/blobs/${layer.digest}`, { redirect: 'manual' });
    expect(res.status).toBe(307);
    const location = new URL(res.headers.get('location')!);
    expect(location.origin).toBe(s3.endpoint);
    expect(location.pathname).toBe(`/${BUCKET}/blobs/sha256/${layer.digest.slice(7)}`);
    expect(location.searchParams.get('X-Amz-Expires')).toBe('900');
    const bytes = Buffer.from(await (await fetch(location)).arrayBuffer());
    expect(sha256(bytes)).toBe(layer.digest);
    const ranged = await fetch(location, { headers: { Range: 'bytes=0-9' } });
    expect(ranged.status).toBe(206);
    expect(Buffer.from(await ranged.arrayBuffer()).equals(bytes.subarray(0, 10))).toBe(true);
    const head = await fetch(`${cache.url}/v2/local/team/multi/blobs/${layer.digest}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(layer.size));
  });

  it('the second pull makes zero upstream requests', async () => {
    proxy.reset();
    for (const arch of ['amd64', 'arm64']) await pull(imageRef(cache.url, 'local/team/multi', 'v1'), arch);
    expect(proxy.requests).toEqual([]);
  });

  it('10 clients pulling the same uncached image at once: each new blob fetched from the upstream exactly once, shared ones never', async () => {
    // team/crowd shares its base layers with team/multi (same real files): those are stored already and are
    // linked through crowd's manifest, never downloaded twice.
    const stored = new Set(multi.blobs.map((b) => b.digest));
    const shared = crowd.blobs.filter((b) => stored.has(b.digest));
    expect(shared.length).toBeGreaterThan(0);
    expect(crowd.blobs.length - shared.length).toBeGreaterThan(0);
    proxy.reset();
    const results = await Promise.all(Array.from({ length: 10 }, () => pull(imageRef(cache.url, 'local/team/crowd', 'v1'))));
    for (const got of results) {
      expect(got.manifest.equals(crowd.manifest)).toBe(true);
      expect(got.blobs.map((b) => b.name).sort()).toEqual(crowd.blobs.map((b) => b.digest).sort());
      for (const b of got.blobs) expect(b.actual).toBe(b.name);
    }
    for (const blob of crowd.blobs) {
      const gets = proxy.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${blob.digest}`));
      expect(gets.map((r) => r.status)).toEqual(stored.has(blob.digest) ? [] : [200]);
    }
    const manifestGets = proxy.requests.filter((r) => r.method === 'GET' && r.path.includes('/manifests/'));
    expect(manifestGets.length).toBe(1);
  });

  it('npx pullthrough verify runs against the AWS backend: finds an S3 object overwritten with other bytes; --repair drops it', async () => {
    const client = s3ClientFor(s3.endpoint);
    const verify = (...args: string[]) => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', 'bin/pullthrough.ts', 'verify', '--json', ...args], {
        cwd: ROOT, encoding: 'utf8', timeout: 120_000, env: { ...process.env, PULLTHROUGH_LOG_LEVEL: 'ERROR', ...awsEnv() },
      });
      return { status: r.status, report: JSON.parse(r.stdout.trim().split('\n').at(-1) ?? 'null'), stderr: r.stderr };
    };
    const damaged = multi.blobs[multi.blobs.length - 1].digest;
    const key = `blobs/sha256/${damaged.slice('sha256:'.length)}`;
    await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: Buffer.from('not the blob') }));
    const found = verify();
    expect(found.status, found.stderr).toBe(1);
    expect(found.report).toMatchObject({ damagedBlobs: [damaged], damagedManifests: [], repaired: false, complete: true });
    const stored = new Set([...multi.blobs, ...crowd.blobs].map((b) => b.digest));
    expect(found.report.checkedBlobs).toBe(stored.size);
    expect(found.report.checkedManifests).toBeGreaterThanOrEqual(4); // multi's index and two platform manifests, crowd's
    const repaired = verify('--repair');
    expect(repaired.status, repaired.stderr).toBe(1); // damage was found (and dropped)
    expect(repaired.report).toMatchObject({ damagedBlobs: [damaged], repaired: true });
    await expect(client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key }))).rejects.toMatchObject({ name: 'NotFound' });
    const clean = verify();
    expect(clean.status, clean.stderr).toBe(0);
    expect(clean.report).toMatchObject({ checkedBlobs: stored.size - 1, damagedBlobs: [] });
    client.destroy();
  });
});
