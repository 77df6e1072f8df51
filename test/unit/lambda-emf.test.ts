/**
 * On Lambda the core's metrics leave as CloudWatch EMF lines (shared/observe/emf.ts), written by Powertools at the
 * end of each invocation: the registry handler is invoked with API Gateway v2 events (a cold then a warm pull of
 * an image from the in-process fake upstream) and the EMF lines on stdout are parsed. Their counts equal what
 * happened: requests by rule, kind and result, upstream requests as the upstream counted them, bytes, fills.
 */
import type { Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildHttpApiEvent } from '../../shared/http/lambda-event.js';
import { createEmfMetrics } from '../../shared/observe/emf.js';
import { seedImage, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.js';
import { setLambdaTestEnv } from '../support/lambda-env.js';

let up: FakeUpstream;
let handler: (e: ReturnType<typeof buildHttpApiEvent>, c: Context) => Promise<{ statusCode?: number }>;
const ctx = { awsRequestId: 'emf-test', functionName: 'registry', getRemainingTimeInMillis: () => 29_000 } as unknown as Context;

/** An EMF line: its `_aws` metadata, dimension values and metric values at the top level. */
type Emf = Record<string, unknown> & { _aws: { CloudWatchMetrics: Array<{ Namespace: string; Dimensions: string[][]; Metrics: Array<{ Name: string; Unit: string }> }> } };

const written: string[] = [];

beforeAll(async () => {
  up = await startFakeUpstream();
  // On Lambda (AWS_LAMBDA_FUNCTION_NAME set) the runtime writes EMF.
  setLambdaTestEnv(up.url, { AWS_LAMBDA_FUNCTION_NAME: 'pullthrough-test-registry' });
  const write = process.stdout.write.bind(process.stdout);
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array, ...rest: unknown[]) => {
    written.push(String(chunk));
    return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
  });
  ({ handler } = (await import('../../functions/registry.js')) as unknown as { handler: typeof handler });
});
afterAll(async () => {
  vi.restoreAllMocks();
  delete process.env.AWS_LAMBDA_FUNCTION_NAME;
  await up.close();
});

/** The EMF lines written since `from`. */
const emfLines = (from = 0): Emf[] =>
  written.slice(from).join('').split('\n').filter((l) => l.includes('"_aws"')).map((l) => JSON.parse(l) as Emf);

/** Sum of metric `name` over the lines whose dimension values include `dims` (and no other dimension keys). */
function sum(lines: Emf[], name: string, dims: Record<string, string>): number {
  return lines
    .filter((l) => {
      const keys = l._aws.CloudWatchMetrics[0].Dimensions[0];
      return keys.length === Object.keys(dims).length && Object.entries(dims).every(([k, v]) => l[k] === v);
    })
    .reduce((a, l) => {
      const v = l[name];
      return a + (Array.isArray(v) ? v.length : typeof v === 'number' ? v : 0);
    }, 0);
}

describe('EMF from the registry handler', () => {
  it('a cold then a warm pull: the EMF counts equal the requests, the upstream\'s own count, the bytes', async () => {
    const layer = Buffer.alloc(4000, 3);
    const img = seedImage(up, 'team/emf', '1.0', [layer]);
    const pull = async () => {
      const statuses = [(await handler(buildHttpApiEvent({ method: 'GET', path: '/v2/local/team/emf/manifests/1.0' }), ctx)).statusCode];
      for (const d of [img.configDigest, img.layerDigests[0]]) statuses.push((await handler(buildHttpApiEvent({ method: 'GET', path: `/v2/local/team/emf/blobs/${d}` }), ctx)).statusCode);
      return statuses;
    };
    const start = written.length;
    expect(await pull()).toEqual([200, 307, 307]);
    const coldLines = emfLines(start);
    const upstreamCount = up.requests.length;
    expect(await pull()).toEqual([200, 307, 307]);
    const lines = emfLines(start);

    // Every line is in the pullthrough namespace, with Rule/Kind/Result, Rule, or the service totals.
    for (const l of lines) {
      expect(l._aws.CloudWatchMetrics[0].Namespace).toBe('pullthrough');
      expect([['Rule', 'Kind', 'Result'], ['Rule'], ['service']]).toContainEqual(l._aws.CloudWatchMetrics[0].Dimensions[0]);
    }
    // One set of lines per invocation: 3 invocations made the cold lines.
    expect(sum(coldLines, 'Requests', { service: 'pullthrough' })).toBe(3);
    expect(sum(lines, 'Requests', { Rule: 'local', Kind: 'manifest', Result: 'miss' })).toBe(1);
    expect(sum(lines, 'Requests', { Rule: 'local', Kind: 'manifest', Result: 'hit' })).toBe(1);
    expect(sum(lines, 'Requests', { Rule: 'local', Kind: 'blob', Result: 'miss' })).toBe(2);
    expect(sum(lines, 'Requests', { Rule: 'local', Kind: 'blob', Result: 'hit' })).toBe(2);
    const imageBytes = img.body.length + img.config.length + layer.length;
    expect(sum(lines, 'ServedBytes', { Rule: 'local', Kind: 'manifest', Result: 'miss' }) + sum(lines, 'ServedBytes', { Rule: 'local', Kind: 'blob', Result: 'miss' })).toBe(imageBytes);
    expect(sum(lines, 'ServedBytes', { Rule: 'local', Kind: 'manifest', Result: 'hit' }) + sum(lines, 'ServedBytes', { Rule: 'local', Kind: 'blob', Result: 'hit' })).toBe(imageBytes);
    // The upstream saw exactly the requests counted, all during the cold pull.
    expect(up.requests.length).toBe(upstreamCount);
    expect(sum(lines, 'UpstreamRequests', { service: 'pullthrough' })).toBe(upstreamCount);
    expect(sum(lines, 'UpstreamRequests', { Rule: 'local', Kind: 'blob', Result: '2xx' })).toBe(up.count({ kind: 'blob', method: 'GET' }));
    expect(sum(lines, 'UpstreamRequests', { Rule: 'local', Kind: 'manifest', Result: '2xx' })).toBe(up.count({ kind: 'manifest' }));
    expect(sum(lines, 'UpstreamErrors', { service: 'pullthrough' })).toBe(0);
    expect(sum(lines, 'UpstreamBytes', { Rule: 'local' })).toBe(imageBytes);
    expect(sum(lines, 'Fills', { Rule: 'local', Kind: 'blob', Result: 'ok' })).toBe(2);
    const durations = lines.filter((l) => l.Result === 'ok' && l.Kind === 'blob').flatMap((l) => [l.FillDuration].flat());
    expect(durations.length).toBe(2);
    expect(durations.every((s) => typeof s === 'number' && s >= 0 && s < 60)).toBe(true);
  });

  it('signature-policy verdicts are Verifications by Rule, Kind=manifest and Result', () => {
    const from = written.length;
    const emf = createEmfMetrics();
    emf.verification({ rule: 'ghcr', result: 'refused' });
    emf.verification({ rule: 'ghcr', result: 'refused' });
    emf.verification({ rule: 'ghcr', result: 'verified' });
    emf.flush();
    const lines = emfLines(from);
    expect(sum(lines, 'Verifications', { Rule: 'ghcr', Kind: 'manifest', Result: 'refused' })).toBe(2);
    expect(sum(lines, 'Verifications', { Rule: 'ghcr', Kind: 'manifest', Result: 'verified' })).toBe(1);
    expect(lines.flatMap((l) => l._aws.CloudWatchMetrics[0].Metrics.map((m) => [m.Name, m.Unit]))).toEqual([['Verifications', 'Count'], ['Verifications', 'Count']]);
  });
});

describe('EMF from the fill handler', () => {
  type FillHandler = (job: { name: string; digest: string; leaseOwner: string }, c: Context) => Promise<{ size?: number; missing?: true }>;
  const fillCtx = { ...ctx, functionName: 'fill', getRemainingTimeInMillis: () => 900_000 } as unknown as Context;
  // No lease (leaseOwner ''): invoked directly, as `aws lambda invoke` would.
  const fill = async (digest: string) => ((await import('../../functions/fill.js')) as unknown as { handler: FillHandler }).handler({ name: 'local/team/fill', digest, leaseOwner: '' }, fillCtx);

  it('a blob the upstream does not have succeeds as { missing: true } and counts no FillFailures', async () => {
    const from = written.length;
    expect(await fill(`sha256:${'cd'.repeat(32)}`)).toEqual({ missing: true });
    const lines = emfLines(from);
    expect(sum(lines, 'FillFailures', { service: 'pullthrough' })).toBe(0);
    expect(sum(lines, 'Fills', { Rule: 'local', Kind: 'blob', Result: 'failed' })).toBe(0);
  });

  it('a blob the upstream fails to send (503) fails the invocation and counts one FillFailures', async () => {
    const digest = up.putBlob('team/fill', Buffer.from('a layer the upstream cannot send'));
    up.faults.status = { kind: 'blob', code: 503 };
    const from = written.length;
    try {
      await expect(fill(digest)).rejects.toThrow('upstream answered 503');
    } finally {
      up.faults.status = undefined;
    }
    const lines = emfLines(from);
    expect(sum(lines, 'FillFailures', { service: 'pullthrough' })).toBe(1);
    expect(sum(lines, 'Fills', { Rule: 'local', Kind: 'blob', Result: 'failed' })).toBe(1);
    expect(await fill(digest)).toEqual({ size: 32 });
  });
});
