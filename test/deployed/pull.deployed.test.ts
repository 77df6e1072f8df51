/**
 * The deployed shape (test/support/deployed/): the stack packaged with osls (serverless-esbuild bundles) and
 * deployed into moto by its own CloudFormation template; the bundled zips — not the TypeScript sources — run as
 * Lambda functions with the environment and role the template gives each (every AWS call checked against that
 * role by the IAM gate), behind an API Gateway HTTP API v2.0 front built from the template's routes, a Lambda
 * Invoke stand-in for the registry's asynchronous fill invocations, and the EventBridge schedule fired on
 * demand. Debian's docker-registry is the upstream, behind a counting proxy; skopeo is the client.
 *
 * The packaged pullthrough.config.yml is the operator's part: one rule to the local upstream, `nightly`
 * re-checked after 1 s so the scheduled refresh has something due, and the largest maxManifestBytes a Lambda
 * deploy accepts; a `missMode: redirect` rule to the same registry's storage behind token auth and a CDN front
 * (test/support/cdn-front.ts: blob GETs answer 307 to a credential-free URL on another host, as Docker Hub's do);
 * defaults otherwise.
 */
import { DynamoDBClient, GetItemCommand } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LAMBDA_MAX_MANIFEST_BYTES, LAMBDA_RESPONSE_BYTES } from '../../shared/config.js';
import { startCdnFront, type CdnFront } from '../support/cdn-front.js';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import { startDeployedShape, type DeployedShape } from '../support/deployed/deployed-shape.js';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { MediaTypes, pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { pullImage, sha256, type PulledImage } from '../support/pull.js';
import { imageRef } from '../support/skopeo.js';
import { startTokenServer, type TokenServer } from '../support/token-server.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const LAYERS = ['/usr/share/common-licenses', '/usr/share/zoneinfo', '/usr/share/doc/libc6'];

let upstream: UpstreamRegistry;
let proxy: CountingProxy;
/** An in-process upstream for what Debian's registry refuses (manifests over 4 MiB). */
let large: FakeUpstream;
let shape: DeployedShape;
let app: PushedImage;
/** `missMode: redirect`: a token-auth registry on upstream's storage, behind a CDN front; an image only it serves. */
let tokens: TokenServer;
let authed: UpstreamRegistry;
let cdn: CdnFront;
let cdnImage: PushedImage;
const ROBOT = { username: 'robot', accessToken: 'deployed-cdn-robot-4c1e' };
/** The deployed function names. */
let fill: string;
let registry: string;
let refresh: string;

/**
 * skopeo pull through the front, bounded by `timeoutMs` (default a minute: a pull that takes longer is killed
 * and fails with what the functions logged).
 */
const pull = (name: string, tag: string, timeoutMs = 60_000) =>
  pullImage(imageRef(shape.front.url, name, tag), { dirPrefix: 'pull-deployed-', timeoutMs }).catch((e: Error) => {
    throw new Error(`${e.message}\n${shape.diagnostics()}`);
  });
const expectSameImage = (got: PulledImage, want: PushedImage) => {
  expect(got.manifest.equals(want.manifest)).toBe(true);
  expect(got.blobs.map((b) => b.name).sort()).toEqual(want.blobs.map((b) => b.digest).sort());
  for (const b of got.blobs) expect(b.actual).toBe(b.name);
};
const upstreamBlobGets = (digest: string) => proxy.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${digest}`));

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  [proxy, app, large] = await Promise.all([
    startCountingProxy(upstream.url),
    pushSinglePlatformImage(upstream.url, 'team/app', 'v1', { format: 'oci', arch: 'amd64', layerSources: LAYERS }),
    startFakeUpstream(),
  ]);
  // Pushed to the open registry; served by a second one on the same storage that wants a token, behind the CDN front.
  [cdnImage, tokens] = await Promise.all([
    pushSinglePlatformImage(upstream.url, 'team/cdn', 'v1', { format: 'oci', arch: 'amd64', layerSources: LAYERS.slice(0, 2), salt: 'cdn' }),
    startTokenServer({ users: { [ROBOT.username]: ROBOT.accessToken } }),
  ]);
  authed = await startUpstreamRegistry({ dataDir: upstream.dataDir, tokenAuth: tokens });
  cdn = await startCdnFront(authed.url, authed.dataDir);
  const config = {
    rules: [
      { prefix: 'local', upstream: proxy.url, frequentTags: { pattern: '^nightly$', ttlSeconds: 1 } },
      { prefix: 'large', upstream: large.url },
      {
        prefix: 'cdn', upstream: cdn.url, ...ROBOT, missMode: 'redirect',
        insecureRedirectHosts: [cdn.cdnHost], internalHosts: [new URL(tokens.realm).host],
      },
    ],
    maxManifestBytes: LAMBDA_MAX_MANIFEST_BYTES,
  };
  shape = await startDeployedShape({ params: { allowAnonymousClients: 'true' }, config: stringify(config) });
  const names = [...shape.stack.functions.values()];
  [fill, registry, refresh] = ['Fill', 'Registry', 'Refresh'].map((id) => names.find((f) => f.logicalId === `${id}LambdaFunction`)!.name);
}, 180_000);

afterAll(async () => {
  await shape?.stop();
  await proxy?.stop();
  await large?.close();
  await cdn?.stop();
  await authed?.stop();
  await tokens?.close();
  await upstream?.stop();
});

describe('the packaged stack on moto, its zips run as Lambda functions behind an HTTP API front', () => {
  it('serves GET /v2/ through the template routes with the registry bundle', async () => {
    const res = await fetch(`${shape.front.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
    expect(shape.front.requests.at(-1)?.routeKey).toBe('ANY /v2/');
  });

  it('a cold pull is byte-exact: each blob filled once by the fill function, invoked asynchronously by the registry', async () => {
    const got = await pull('local/team/app', 'v1');
    expectSameImage(got, app);
    for (const blob of app.blobs) expect(upstreamBlobGets(blob.digest).map((r) => r.status)).toEqual([200]);
    const fills = shape.invoke.requests.filter((r) => r.functionName === fill);
    expect(fills.map((r) => [r.caller, r.type, r.status])).toEqual(app.blobs.map(() => [registry, 'Event', 202]));
    await shape.runtime.settled();
    const ran = shape.runtime.invocations.filter((i) => i.functionName === fill);
    expect(ran.map((i) => i.error)).toEqual(app.blobs.map(() => undefined));
  });

  it('a warm pull is byte-exact with zero upstream requests and no fill', async () => {
    proxy.reset();
    const invocations = shape.invoke.requests.length;
    expectSameImage(await pull('local/team/app', 'v1'), app);
    expect(proxy.requests).toEqual([]);
    expect(shape.invoke.requests.length).toBe(invocations);
  });

  it('a layer stored for one rule, asked for through another whose upstream refuses blob HEADs: proven by the fill function (mode prove), then served from S3', async () => {
    const layer = app.blobs.at(-1)!;
    const bytes = Buffer.from(await (await fetch(`${upstream.url}/v2/team/app/blobs/${layer.digest}`)).arrayBuffer());
    large.putBlob('mirror/app', bytes);
    large.faults.status = { kind: 'blob', method: 'HEAD', code: 401 }; // as public.ecr.aws answers every blob HEAD
    try {
      const before = shape.runtime.invocations.length;
      let res = await fetch(`${shape.front.url}/v2/large/mirror/app/blobs/${layer.digest}`, { redirect: 'manual' });
      // A proof outlasting blobFill.waitSeconds answers a hop (307 to itself) while the fill function goes on.
      for (let hop = 0; hop < 9 && res.status === 307 && res.headers.get('location')!.includes('pt-hop='); hop++) {
        res = await fetch(new URL(res.headers.get('location')!, shape.front.url), { redirect: 'manual' });
      }
      expect(res.status).toBe(307);
      const location = new URL(res.headers.get('location')!);
      expect(location.origin).toBe(shape.gate.url);
      expect(sha256(Buffer.from(await (await fetch(location)).arrayBuffer()))).toBe(layer.digest);
      await shape.runtime.settled();
      const ran = shape.runtime.invocations.slice(before).filter((i) => i.functionName === fill);
      const job = (i: (typeof ran)[number]) => i.event as { mode?: string; name: string; digest: string };
      expect(ran.map((i) => [job(i).mode, job(i).name, job(i).digest, i.error, i.payload])).toEqual([['prove', 'large/mirror/app', layer.digest, undefined, '{"linked":true}']]);
      expect(large.count({ method: 'GET', kind: 'blob' })).toBe(1);
    } finally {
      large.faults.status = undefined;
    }
  });

  it('the first fill Invoke failing (IAM still propagating) does not wedge the blob: the pull succeeds within a minute', async () => {
    const flaky = await pushSinglePlatformImage(upstream.url, 'team/flaky', 'v1', { format: 'oci', arch: 'amd64', layerSources: LAYERS.slice(0, 1), salt: 'flaky' });
    const before = shape.invoke.requests.length;
    shape.invoke.failNext(fill, 1);
    const got = await pull('local/team/flaky', 'v1');
    expectSameImage(got, flaky);
    const fills = shape.invoke.requests.slice(before).filter((r) => r.functionName === fill);
    expect(fills[0]).toMatchObject({ status: 403, errorType: 'AccessDeniedException' });
    expect(fills.slice(1).every((r) => r.status === 202)).toBe(true);
  });

  it('missMode redirect: the first blob GET gets the upstream\'s CDN URL, the fill stores the blob in S3, and the next pull is a hit', async () => {
    const layer = cdnImage.blobs.at(-1)!;
    const before = shape.invoke.requests.length;
    const first = await fetch(`${shape.front.url}/v2/cdn/team/cdn/blobs/${layer.digest}`, { redirect: 'manual' });
    expect(first.status).toBe(307);
    const cdnUrl = new URL(first.headers.get('location')!);
    expect(cdnUrl.host).toBe(cdn.cdnHost);
    expect(sha256(Buffer.from(await (await fetch(cdnUrl)).arrayBuffer()))).toBe(layer.digest);
    // The registry dispatched the fill before answering; the fill function stored the very bytes in the bucket.
    expect(shape.invoke.requests.slice(before).filter((r) => r.functionName === fill).map((r) => r.status)).toContain(202);
    await shape.runtime.settled();
    const s3 = new S3Client({ ...shape.stack.clientConfig, forcePathStyle: true });
    /** The digest of the bucket's object for `digest` (read straight from moto, not through the IAM gate). */
    const stored = async (digest: string) => {
      const object = await s3.send(new GetObjectCommand({ Bucket: shape.stack.physicalIds.Bucket, Key: `blobs/sha256/${digest.slice('sha256:'.length)}` }));
      return sha256(Buffer.from(await object.Body!.transformToByteArray()));
    };
    expect(await stored(layer.digest)).toBe(layer.digest);
    // skopeo: byte-exact while the rest fills (from the CDN or, once filled, from S3) ...
    expectSameImage(await pull('cdn/team/cdn', 'v1'), cdnImage);
    await shape.runtime.settled();
    for (const b of cdnImage.blobs) expect(await stored(b.digest)).toBe(b.digest);
    s3.destroy();
    // ... and the next pull is a hit: no blob request to the front, none to its CDN.
    const [frontSeen, cdnSeen] = [cdn.front.length, cdn.cdn.length];
    const second = await fetch(`${shape.front.url}/v2/cdn/team/cdn/blobs/${layer.digest}`, { redirect: 'manual' });
    expect(new URL(second.headers.get('location')!).origin).toBe(shape.gate.url);
    expectSameImage(await pull('cdn/team/cdn', 'v1'), cdnImage);
    expect(cdn.front.slice(frontSeen).filter((r) => r.path.includes('/blobs/'))).toEqual([]);
    expect(cdn.cdn.length).toBe(cdnSeen);
    expect(cdn.cdn.length).toBeGreaterThan(0);
    expect(cdn.cdn.every((r) => !r.authorization)).toBe(true);
  });

  it('the scheduled event runs the refresh bundle: a moved tag is re-pointed in the table before any pull asks', async () => {
    const nightly1 = await pushSinglePlatformImage(upstream.url, 'team/app', 'nightly', { format: 'oci', arch: 'amd64', layerSources: LAYERS.slice(0, 1), salt: 'n1' });
    expectSameImage(await pull('local/team/app', 'nightly'), nightly1);
    const nightly2 = await pushSinglePlatformImage(upstream.url, 'team/app', 'nightly', { format: 'oci', arch: 'amd64', layerSources: LAYERS.slice(0, 1), salt: 'n2' });
    // `nightly` is due one second after its check (the rule's frequentTags TTL).
    await new Promise((r) => setTimeout(r, 1100));
    proxy.reset();
    const schedule = shape.stack.schedules.find((x) => x.targets.some((t) => t.functionName === refresh));
    expect(schedule?.expression).toBe('rate(1 day)');
    const [run, ...others] = await shape.fireSchedule(schedule);
    expect(others).toEqual([]);
    expect(run.functionName).toBe(refresh);
    expect((run.event as { 'detail-type': string })['detail-type']).toBe('Scheduled Event');
    expect(run.error).toBeUndefined();
    expect(JSON.parse(run.payload!)).toMatchObject({ moved: 1, errors: 0, stoppedEarly: false });
    expect(proxy.requests.filter((r) => r.path.endsWith('/manifests/nightly')).map((r) => r.method)).toContain('HEAD');
    const db = new DynamoDBClient(shape.stack.clientConfig);
    const { Item } = await db.send(new GetItemCommand({ TableName: shape.stack.physicalIds.Table, Key: { pk: { S: 'repo#local/team/app' }, sk: { S: 'tag#nightly' } } }));
    db.destroy();
    expect(Item?.digest?.S).toBe(nightly2.digest);
    expectSameImage(await pull('local/team/app', 'nightly'), nightly2);
  });

  it('the gc bundle runs a complete pass by its own schedule, and keeps everything pulled', async () => {
    const gc = [...shape.stack.functions.values()].find((f) => f.logicalId === 'GcLambdaFunction');
    expect(gc, 'serverless.yml has a gc function').toBeDefined();
    const schedule = shape.stack.schedules.find((x) => x.targets.some((t) => t.functionName === gc!.name));
    const [run] = await shape.fireSchedule(schedule);
    expect(run.error).toBeUndefined();
    // Its blob sweep listed `blobs/`, which its role allows on that prefix only (a policy condition).
    expect(shape.gate.decisions.filter((d) => d.caller === gc!.name && d.action === 's3:ListBucket').map((d) => d.allowed)).toContain(true);
    const report = JSON.parse(run.payload!) as { complete: boolean; dryRun: boolean; storedBytes: number };
    expect(report).toMatchObject({ complete: true, dryRun: false });
    // Nothing is over a budget or expired: every blob pulled so far is still stored.
    expect(report.storedBytes).toBeGreaterThanOrEqual(app.blobs.reduce((n, b) => n + b.size, 0));
    proxy.reset();
    expectSameImage(await pull('local/team/app', 'v1'), app);
    expect(proxy.requests).toEqual([]);
  });

  it(`a manifest of the largest size a Lambda response can carry (maxManifestBytes = ${LAMBDA_MAX_MANIFEST_BYTES}) is served byte-exact`, async () => {
    // app's own manifest, padded with an annotation to exactly the bound.
    const manifest = JSON.parse(app.manifest.toString('utf8')) as Record<string, unknown>;
    const pad = (n: number) => Buffer.from(JSON.stringify({ ...manifest, annotations: { 'org.example.pad': 'x'.repeat(n) } }));
    const big = pad(LAMBDA_MAX_MANIFEST_BYTES - pad(0).length);
    expect(big.length).toBe(LAMBDA_MAX_MANIFEST_BYTES);
    // Debian's distribution 2.8 refuses manifests over 4 MiB, so the in-process fake upstream serves this one.
    const digest = large.putManifest('team/app', 'big', { body: big, contentType: MediaTypes.ociManifest });
    // By tag (fetched from the upstream and stored in S3: too large for an item), then by digest from the store.
    for (const reference of ['big', digest]) {
      const res = await fetch(`${shape.front.url}/v2/large/team/app/manifests/${reference}`, { headers: { accept: MediaTypes.ociManifest } });
      expect(res.status).toBe(200);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
      expect(Buffer.from(await res.arrayBuffer()).equals(big)).toBe(true);
      const answered = shape.runtime.invocations.filter((i) => i.functionName === registry).at(-1)!;
      expect(answered.payloadBytes).toBeGreaterThan(LAMBDA_RESPONSE_BYTES - 32 * 1024);
      expect(answered.payloadBytes).toBeLessThanOrEqual(LAMBDA_RESPONSE_BYTES);
    }
  });

  it('an unexpected error is logged with a readable stack trace, without --enable-source-maps', async () => {
    expect(shape.stack.functions.get(registry)!.environment.NODE_OPTIONS ?? '').not.toContain('--enable-source-maps');
    shape.gate.denyNext(registry, 'dynamodb:GetItem');
    const res = await fetch(`${shape.front.url}/v2/local/team/unseen/manifests/v1`);
    expect(res.status).toBe(500);
    expect((await res.json()).errors[0].code).toBe('UNKNOWN');
    const line = shape.runtime.log(registry).split('\n').filter((l) => l.includes('"unexpected error"')).at(-1)!;
    const { error } = JSON.parse(line) as { error: { name: string; location: string; stack: string } };
    expect(error.name).toBe('AccessDeniedException');
    // Paths are relative to where the stack was packaged (here a scratch copy whose folders link to the repository).
    expect(error.location).toMatch(/^(\S+\/)?(shared|node_modules)\/\S+\.[jt]s:\d+$/);
    expect(error.stack).toMatch(/\((\S+\/)?shared\/store\/dynamodb-[a-z-]+\.ts:\d+:\d+\)/);
    expect(error.stack).not.toContain('.mjs:');
  });

  it('every AWS request the functions made was one their roles allow (presigned blob URLs included)', () => {
    const denied = shape.gate.decisions.filter((d) => !d.allowed && !d.injected);
    expect(denied).toEqual([]);
    const kinds = new Set(shape.gate.decisions.map((d) => `${d.caller} ${d.action}${d.presigned ? ' (presigned)' : ''}`));
    expect(kinds).toContain(`${registry} s3:GetObject (presigned)`);
    expect(kinds).toContain(`${fill} s3:PutObject`);
    expect(kinds).toContain(`${registry} lambda:InvokeFunction`);
  });

  it('(the IAM gate refuses what a role lacks and a presigned URL whose signature does not match: an empty list above means something)', async () => {
    const layer = app.blobs.at(-1)!;
    const asFill = new S3Client({ ...shape.stack.clientConfig, endpoint: shape.gate.url, forcePathStyle: true, credentials: shape.stack.functions.get(fill)!.credentials });
    const key = `blobs/sha256/${layer.digest.slice('sha256:'.length)}`;
    await expect(asFill.send(new GetObjectCommand({ Bucket: shape.stack.physicalIds.Bucket, Key: key }))).rejects.toMatchObject({ name: 'AccessDenied' });
    asFill.destroy();
    const gc = [...shape.stack.functions.values()].find((f) => f.logicalId === 'GcLambdaFunction')!;
    const asGc = new S3Client({ ...shape.stack.clientConfig, endpoint: shape.gate.url, forcePathStyle: true, credentials: gc.credentials });
    // Its role lists `blobs/` and `manifests/` only, never the whole bucket.
    await expect(asGc.send(new ListObjectsV2Command({ Bucket: shape.stack.physicalIds.Bucket }))).rejects.toMatchObject({ name: 'AccessDenied' });
    asGc.destroy();
    const res = await fetch(`${shape.front.url}/v2/local/team/app/blobs/${layer.digest}`, { redirect: 'manual' });
    expect(res.status).toBe(307);
    const presigned = new URL(res.headers.get('location')!);
    expect(presigned.origin).toBe(shape.gate.url);
    expect(sha256(Buffer.from(await (await fetch(presigned)).arrayBuffer()))).toBe(layer.digest);
    presigned.searchParams.set('X-Amz-Expires', '604800');
    expect((await fetch(presigned)).status).toBe(403);
    expect(shape.gate.decisions.filter((d) => !d.allowed && !d.injected).map((d) => `${d.caller} ${d.action}${d.presigned ? ' (presigned)' : ''}`)).toEqual([
      `${fill} s3:GetObject`,
      `${gc.name} s3:ListBucket`,
      `${registry} s3:GetObject (presigned)`,
    ]);
  });
});
