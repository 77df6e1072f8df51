/**
 * The deployed shape (test/support/deployed/): the stack packaged with osls (serverless-esbuild bundles) and
 * deployed into moto by its own CloudFormation template; the bundled zips — not the TypeScript sources — run as
 * Lambda functions with the environment and role the template gives each (every AWS call checked against that
 * role by the IAM gate), behind an API Gateway HTTP API v2.0 front built from the template's routes, a Lambda
 * Invoke stand-in for the registry's asynchronous fill invocations, and the EventBridge schedule fired on
 * demand. Debian's docker-registry is the upstream, behind a counting proxy; skopeo is the client.
 *
 * The packaged pullthrough.config.yml is the operator's part: one rule to the local upstream (defaults
 * otherwise), `nightly` re-checked after 1 s so the scheduled refresh has something due.
 */
import { DynamoDBClient, GetItemCommand } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCountingProxy, type CountingProxy } from '../support/counting-proxy.js';
import { startDeployedShape, type DeployedShape } from '../support/deployed/deployed-shape.js';
import { pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { pullImage, sha256, type PulledImage } from '../support/pull.js';
import { imageRef } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const LAYERS = ['/usr/share/common-licenses', '/usr/share/zoneinfo', '/usr/share/doc/libc6'];

let upstream: UpstreamRegistry;
let proxy: CountingProxy;
let shape: DeployedShape;
let app: PushedImage;
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
  [proxy, app] = await Promise.all([
    startCountingProxy(upstream.url),
    pushSinglePlatformImage(upstream.url, 'team/app', 'v1', { format: 'oci', arch: 'amd64', layerSources: LAYERS }),
  ]);
  const config = { rules: [{ prefix: 'local', upstream: proxy.url, frequentTags: { pattern: '^nightly$', ttlSeconds: 1 } }] };
  shape = await startDeployedShape({ params: { allowAnonymousClients: 'true' }, config: stringify(config) });
  const names = [...shape.stack.functions.values()];
  [fill, registry, refresh] = ['Fill', 'Registry', 'Refresh'].map((id) => names.find((f) => f.logicalId === `${id}LambdaFunction`)!.name);
}, 180_000);

afterAll(async () => {
  await shape?.stop();
  await proxy?.stop();
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

  // Skipped until the miss-path fix (issue 11 item 1: a failed dispatch releases the fill lease and is retried)
  // is on main: today the registry answers 500 UNKNOWN and the lease it took wedges the blob for leaseSeconds.
  it.skip('the first fill Invoke failing (IAM still propagating) does not wedge the blob: the pull succeeds within a minute', async () => {
    const flaky = await pushSinglePlatformImage(upstream.url, 'team/flaky', 'v1', { format: 'oci', arch: 'amd64', layerSources: LAYERS.slice(0, 1), salt: 'flaky' });
    const before = shape.invoke.requests.length;
    shape.invoke.failNext(fill, 1);
    const got = await pull('local/team/flaky', 'v1');
    expectSameImage(got, flaky);
    const fills = shape.invoke.requests.slice(before).filter((r) => r.functionName === fill);
    expect(fills[0]).toMatchObject({ status: 403, errorType: 'AccessDeniedException' });
    expect(fills.slice(1).every((r) => r.status === 202)).toBe(true);
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

  it('every AWS request the functions made was one their roles allow (presigned blob URLs included)', () => {
    const denied = shape.gate.decisions.filter((d) => !d.allowed);
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
    const res = await fetch(`${shape.front.url}/v2/local/team/app/blobs/${layer.digest}`, { redirect: 'manual' });
    expect(res.status).toBe(307);
    const presigned = new URL(res.headers.get('location')!);
    expect(presigned.origin).toBe(shape.gate.url);
    expect(sha256(Buffer.from(await (await fetch(presigned)).arrayBuffer()))).toBe(layer.digest);
    presigned.searchParams.set('X-Amz-Expires', '604800');
    expect((await fetch(presigned)).status).toBe(403);
    expect(shape.gate.decisions.filter((d) => !d.allowed).map((d) => `${d.caller} ${d.action}${d.presigned ? ' (presigned)' : ''}`)).toEqual([
      `${fill} s3:GetObject`,
      `${registry} s3:GetObject (presigned)`,
    ]);
  });
});
