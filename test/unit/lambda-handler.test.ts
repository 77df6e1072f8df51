/**
 * The Lambda entry point, invoked with API Gateway HTTP API v2 events built by the factory (not copied JSON).
 */
import type { Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHttpApiEvent } from '../../shared/http/lambda-event.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { setLambdaTestEnv } from '../support/lambda-env.js';

let up: FakeUpstream;
let handler: (e: ReturnType<typeof buildHttpApiEvent>, c: Context) => Promise<{ statusCode?: number; headers?: Record<string, unknown>; body?: string; isBase64Encoded?: boolean }>;
const ctx = { awsRequestId: 'test', functionName: 'registry', getRemainingTimeInMillis: () => 29_000 } as unknown as Context;

beforeAll(async () => {
  up = await startFakeUpstream();
  setLambdaTestEnv(up.url);
  ({ handler } = (await import('../../functions/registry.js')) as unknown as { handler: typeof handler });
});
afterAll(async () => up.close());

describe('registry Lambda handler', () => {
  it('answers GET /v2/ with 200 {} and the API version header', async () => {
    const res = await handler(buildHttpApiEvent({ method: 'GET', path: '/v2/' }), ctx);
    expect(res.statusCode).toBe(200);
    expect(res.headers?.['Docker-Distribution-API-Version']).toBe('registry/2.0');
    expect(Buffer.from(res.body!, 'base64').toString()).toBe('{}');
  });

  it('serves a manifest byte-exact (base64) on GET and the same headers with no body on HEAD', async () => {
    const img = seedImage(up, 'team/app', '1.0', [Buffer.from('layer')], { docker: true });
    const get = await handler(buildHttpApiEvent({ method: 'GET', path: '/v2/local/team/app/manifests/1.0', headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json' } }), ctx);
    expect(get.statusCode).toBe(200);
    expect(get.isBase64Encoded).toBe(true);
    expect(Buffer.from(get.body!, 'base64').equals(img.body)).toBe(true);
    expect(get.headers?.['Content-Type']).toBe('application/vnd.docker.distribution.manifest.v2+json');
    const head = await handler(buildHttpApiEvent({ method: 'HEAD', path: '/v2/local/team/app/manifests/1.0' }), ctx);
    expect(head.statusCode).toBe(200);
    expect(head.body).toBe('');
    expect(head.headers).toEqual(get.headers);
  });

  it('answers a blob GET with 307 and a blob HEAD with 200 and the size', async () => {
    const layer = Buffer.from('some layer bytes');
    const img = seedImage(up, 'team/app', '2.0', [layer]);
    const get = await handler(buildHttpApiEvent({ method: 'GET', path: `/v2/local/team/app/blobs/${img.layerDigests[0]}` }), ctx);
    expect(get.statusCode).toBe(307);
    expect(String(get.headers?.Location)).toMatch(/^\/_blobs\/sha256\/[a-f0-9]{64}\?expires=\d+&signature=/);
    const head = await handler(buildHttpApiEvent({ method: 'HEAD', path: `/v2/local/team/app/blobs/${img.layerDigests[0]}` }), ctx);
    expect(head.statusCode).toBe(200);
    expect(head.headers?.['Content-Length']).toBe(String(layer.length));
    expect(head.headers?.['Docker-Content-Digest']).toBe(img.layerDigests[0]);
  });

  it('answers push with 405 UNSUPPORTED in the OCI error format', async () => {
    const res = await handler(buildHttpApiEvent({ method: 'POST', path: '/v2/local/team/app/blobs/uploads/', body: Buffer.from('x') }), ctx);
    expect(res.statusCode).toBe(405);
    expect(JSON.parse(Buffer.from(res.body!, 'base64').toString())).toEqual({ errors: [{ code: 'UNSUPPORTED', message: 'this registry is a read-only pull-through cache' }] });
  });
});
