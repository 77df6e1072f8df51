/**
 * maxManifestBytes against Lambda's 6 MB response limit (shared/config-limits.ts): the bound leaves room for the
 * base64 body and its envelope, a config above it is refused on Lambda with a message that says why, and the
 * local server keeps its freedom.
 */
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assertServable, LAMBDA_MAX_MANIFEST_BYTES, LAMBDA_RESPONSE_BYTES, parseConfig, readEnvironment } from '../../shared/config.js';
import { toHttpApiResult } from '../../shared/http/lambda-event.js';
import { buildRuntime } from '../../shared/runtime.js';

const rules = [{ prefix: 'local', upstream: 'http://127.0.0.1:5055' }];
const lambda = { inLambda: true };

/** The function's response for a manifest of `size` bytes, as Lambda measures it (its JSON). */
const responseBytes = (size: number) =>
  Buffer.byteLength(
    JSON.stringify(
      toHttpApiResult({
        status: 200,
        headers: {
          'Content-Type': 'application/vnd.oci.image.index.v1+json',
          'Docker-Content-Digest': `sha256:${'a'.repeat(64)}`,
          'Content-Length': String(size),
          'Docker-Distribution-API-Version': 'registry/2.0',
          'X-Content-Type-Options': 'nosniff',
        },
        body: Buffer.alloc(size, 0x7b),
      }),
    ),
  );

describe('maxManifestBytes on Lambda', () => {
  it('the bound (4,706,304 bytes) is above the 4 MiB the spec asks for, and its response fits in 6 MB; one 3-byte step more would not leave the room kept', () => {
    expect(LAMBDA_RESPONSE_BYTES).toBe(6_291_456);
    expect(LAMBDA_MAX_MANIFEST_BYTES).toBe(4_706_304);
    expect(LAMBDA_MAX_MANIFEST_BYTES).toBeGreaterThanOrEqual(4 * 1024 * 1024);
    expect(responseBytes(LAMBDA_MAX_MANIFEST_BYTES)).toBeLessThanOrEqual(LAMBDA_RESPONSE_BYTES);
    expect(responseBytes(4 * 1024 * 1024)).toBeLessThanOrEqual(LAMBDA_RESPONSE_BYTES);
    // Past 4.5 MiB the base64 body alone is over the limit.
    expect(responseBytes(4.5 * 1024 * 1024 + 3)).toBeGreaterThan(LAMBDA_RESPONSE_BYTES);
  });

  it('a config above the bound is refused on Lambda with the setting, the limit and the reason; at the bound, or off Lambda, it is not', () => {
    const over = parseConfig({ rules, maxManifestBytes: LAMBDA_MAX_MANIFEST_BYTES + 1 });
    expect(() => assertServable(lambda, over)).toThrow(
      new Error(
        'invalid pullthrough config:\nmaxManifestBytes 4706305 is more than a Lambda function can answer: a manifest goes base64-encoded ' +
          'into a response of at most 6 MB (6291456 bytes), so at most 4706304 here',
      ),
    );
    expect(() => assertServable(lambda, parseConfig({ rules, maxManifestBytes: LAMBDA_MAX_MANIFEST_BYTES }))).not.toThrow();
    expect(() => assertServable(lambda, parseConfig({ rules }))).not.toThrow();
    expect(() => assertServable({ inLambda: false }, over)).not.toThrow();
  });

  it('the runtime refuses it at start-up on Lambda, before any storage is opened', async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), 'pt-limits-')), 'data');
    const env = { ...readEnvironment({ AWS_LAMBDA_FUNCTION_NAME: 'registry', PULLTHROUGH_LOG_LEVEL: 'SILENT' }), dataDir };
    await expect(buildRuntime(env, parseConfig({ rules, maxManifestBytes: 5_000_000 }))).rejects.toThrow(/maxManifestBytes 5000000 is more than a Lambda function can answer/);
    expect(existsSync(dataDir)).toBe(false);
  });
});
