/**
 * `missMode: redirect` end to end on the AWS backend (the real local server with PULLTHROUGH_BACKEND=aws against
 * DynamoDB Local and s3rver): the upstream is Debian's docker-registry behind token auth (our token server) and a
 * CDN front (test/support/cdn-front.ts) that answers blob GETs with a 307 to a credential-free, signed URL on
 * another host, as Docker Hub's CDN does. A blob miss is answered at once with the upstream's CDN URL while the
 * cache fills the blob into S3 in the background; once filled, the blob is a hit served from S3. skopeo pulls
 * byte-exact both ways; the CDN never sees an Authorization header.
 */
import { readFileSync } from 'node:fs';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Digest } from '../../shared/oci/digest.js';
import { createTable } from '../../shared/store/dynamodb-index.js';
import { startCdnFront, type CdnFront } from '../support/cdn-front.js';
import { startDynamoDbLocal, type DynamoDbLocal } from '../support/dynamodb-local.js';
import { eventually } from '../support/eventually.js';
import { pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { pullImage, sha256 } from '../support/pull.js';
import { awsBackendEnv, createBucket, s3ClientFor, startS3rver, S3RVER_CREDENTIALS, type S3rverInstance } from '../support/s3rver.js';
import { imageRef } from '../support/skopeo.js';
import { startTokenServer, type TokenServer } from '../support/token-server.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const TABLE = 'miss-redirect';
const BUCKET = 'miss-redirect';
const ROBOT = 'robot';
const ROBOT_TOKEN = 'cdn-robot-token-7f3a';

let tokens: TokenServer;
let registry: UpstreamRegistry;
let front: CdnFront;
let dynamo: DynamoDbLocal;
let s3: S3rverInstance;
let cache: LocalServer;
let image: PushedImage;

beforeAll(async () => {
  tokens = await startTokenServer({ users: { [ROBOT]: ROBOT_TOKEN } });
  const open = await startUpstreamRegistry();
  [image, dynamo, s3] = await Promise.all([
    pushSinglePlatformImage(open.url, 'team/app', 'v1', { format: 'oci', arch: 'amd64', layerSources: ['/usr/share/common-licenses', '/usr/share/zoneinfo'] }),
    startDynamoDbLocal(),
    startS3rver(),
  ]);
  await open.stop();
  registry = await startUpstreamRegistry({ port: open.port, dataDir: open.dataDir, tokenAuth: tokens });
  front = await startCdnFront(registry.url, registry.dataDir);
  await createTable(new DynamoDBClient({ endpoint: dynamo.endpoint, region: 'us-east-1', credentials: S3RVER_CREDENTIALS }), TABLE);
  await createBucket(s3ClientFor(s3.endpoint), BUCKET);
  cache = await startLocalServer(
    {
      rules: [{
        prefix: 'cdn', upstream: front.url, username: ROBOT, accessToken: ROBOT_TOKEN, missMode: 'redirect',
        insecureRedirectHosts: [front.cdnHost], internalHosts: [new URL(tokens.realm).host],
      }],
    },
    { env: awsBackendEnv({ dynamodb: dynamo.endpoint, s3: s3.endpoint, table: TABLE, bucket: BUCKET }) },
  );
}, 180_000);

afterAll(async () => {
  await cache?.stop();
  await front?.stop();
  await registry?.stop();
  await tokens?.close();
  await s3?.stop();
  await dynamo?.stop();
});

/** The object of `digest` in the bucket, or undefined. */
async function objectOf(digest: string): Promise<Buffer | undefined> {
  const client = s3ClientFor(s3.endpoint);
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: `blobs/sha256/${digest.slice('sha256:'.length)}` }));
    return Buffer.from(await res.Body!.transformToByteArray());
  } catch {
    return undefined;
  } finally {
    client.destroy();
  }
}

/** The server's `blob filled` log lines for `digest` (one per completed fill: stored, recorded, linked). */
const filledLines = (digest: string) =>
  readFileSync(cache.logPath, 'utf8').split('\n').filter((l) => l.includes('"blob filled"') && l.includes(digest)).length;

const blobGet = (digest: string) => fetch(`${cache.url}/v2/cdn/team/app/blobs/${digest}`, { redirect: 'manual' });

describe('missMode: redirect against an upstream whose blob GETs redirect to a CDN', () => {
  it('the setup is real: anonymous blob GETs are refused, authorised ones get a 307 to the CDN host', async () => {
    const layer = image.blobs.at(-1)!.digest;
    expect((await fetch(`${front.url}/v2/team/app/blobs/${layer}`, { redirect: 'manual' })).status).toBe(401);
    const token = await fetch(`${tokens.realm}?service=${tokens.service}&scope=repository:team/app:pull`, {
      headers: { Authorization: `Basic ${Buffer.from(`${ROBOT}:${ROBOT_TOKEN}`).toString('base64')}` },
    }).then((r) => r.json() as Promise<{ token: string }>);
    const res = await fetch(`${front.url}/v2/team/app/blobs/${layer}`, { redirect: 'manual', headers: { Authorization: `Bearer ${token.token}` } });
    expect(res.status).toBe(307);
    expect(new URL(res.headers.get('location')!).host).toBe(front.cdnHost);
  });

  it('the first blob GET gets the upstream\'s CDN URL, the blob is in S3 afterwards, and the next GET is a hit from S3', async () => {
    const layer = image.blobs.at(-1)!;
    const first = await blobGet(layer.digest);
    expect(first.status).toBe(307);
    const cdnUrl = new URL(first.headers.get('location')!);
    expect(cdnUrl.host).toBe(front.cdnHost);
    const fromCdn = Buffer.from(await (await fetch(cdnUrl)).arrayBuffer());
    expect(sha256Digest(fromCdn)).toBe(layer.digest);
    // The fill ran meanwhile: the object is in the bucket with exactly the blob's bytes.
    await eventually(async () => (await objectOf(layer.digest)) !== undefined, 30_000);
    expect(sha256Digest((await objectOf(layer.digest))!)).toBe(layer.digest);
    // The object is uploaded before the fill records and links it: the next GET is a hit once the fill ended.
    await eventually(async () => filledLines(layer.digest) === 1, 30_000);
    const next = await blobGet(layer.digest);
    expect(next.status).toBe(307);
    expect(new URL(next.headers.get('location')!).origin).toBe(s3.endpoint);
    expect(front.cdn.every((r) => !r.authorization)).toBe(true);
  });

  it('skopeo pulls byte-exact while the cache fills; the next pull is served from S3: no request to the front or its CDN', async () => {
    const cdnBefore = front.cdn.length;
    const got = await pullImage(imageRef(cache.url, 'cdn/team/app', 'v1'), { dirPrefix: 'miss-redirect-' });
    expect(sha256(got.manifest)).toBe(image.digest);
    expect(front.cdn.length).toBeGreaterThan(cdnBefore); // the blobs not yet cached came from the CDN
    expect(got.blobs.map((b) => b.name).sort()).toEqual(image.blobs.map((b) => b.digest).sort());
    for (const b of got.blobs) expect(b.actual).toBe(b.name);
    for (const b of image.blobs) await eventually(async () => (await objectOf(b.digest)) !== undefined, 30_000);
    const [frontSeen, cdnSeen] = [front.front.length, front.cdn.length];
    const again = await pullImage(imageRef(cache.url, 'cdn/team/app', 'v1'), { dirPrefix: 'miss-redirect-' });
    for (const b of again.blobs) expect(b.actual).toBe(b.name);
    expect(again.blobs.length).toBe(image.blobs.length);
    expect(front.cdn.length).toBe(cdnSeen);
    expect(front.front.slice(frontSeen).filter((r) => r.path.includes('/blobs/'))).toEqual([]);
    expect(front.cdn.every((r) => !r.authorization)).toBe(true);
  });
});
