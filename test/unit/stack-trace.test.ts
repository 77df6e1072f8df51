/**
 * Readable stack traces from a minified bundle without `--enable-source-maps` (shared/stack-trace.ts): a fixture
 * bundled the way serverless.yml bundles the functions (esbuild, ESM, minified, linked source map without
 * sources), thrown from in a plain Node process, its stack mapped back to the fixture's lines, and the same
 * through the logger's JSON output.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createLogger, sourceMappedError } from '../../shared/logger.js';
import { mapStackTrace } from '../../shared/stack-trace.js';
import { scratchDir } from '../support/scratch.js';

const run = promisify(execFile);

/** The fixture: `explode` throws on line 6, column 9 (`new Error`), called from `outer` on line 9. */
const FIXTURE = `// A fixture for stack-trace mapping.
export interface Options {
  reason: string;
}
function explode(o: Options): never {
  throw new Error(\`boom: \${o.reason}\`);
}
export function outer(reason: string): never {
  return explode({ reason });
}
`;

let rawStack: string;
let bundle: string;

beforeAll(async () => {
  const dir = scratchDir('stack-trace-');
  mkdirSync(join(dir, 'src'));
  writeFileSync(join(dir, 'src', 'fixture.ts'), FIXTURE);
  bundle = join(dir, 'out', 'functions', 'fixture.mjs');
  await build({
    entryPoints: [join(dir, 'src', 'fixture.ts')], outfile: bundle, bundle: true, format: 'esm', platform: 'node',
    minify: true, sourcemap: 'linked', sourcesContent: false, logLevel: 'silent',
  });
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', `
    const { outer } = await import(${JSON.stringify(bundle)});
    try { outer('disk full'); } catch (e) { process.stdout.write(e.stack); }
  `], { env: { PATH: process.env.PATH } });
  rawStack = stdout;
});

afterEach(() => vi.restoreAllMocks());

describe('mapStackTrace', () => {
  it('maps the frames of a minified bundle to the original source, line and column', () => {
    // Unmapped, the frames point into the bundle's one minified line.
    expect(rawStack).toMatch(/fixture\.mjs:1:\d+/);
    const mapped = mapStackTrace(rawStack).split('\n');
    expect(mapped[0]).toBe('Error: boom: disk full');
    expect(mapped[1]).toMatch(/^ {4}at \S+ \(src\/fixture\.ts:6:9\)$/);
    expect(mapped[2]).toMatch(/\(src\/fixture\.ts:9:10\)$/);
    expect(mapped.join('\n')).not.toContain('fixture.mjs');
  });

  it('leaves frames of files without a source map, and lines that are not frames, as they are', () => {
    const stack = ['Error: x', '    at f (/nowhere/plain.js:10:5)', '    at node:internal/process/task_queues:95:5', 'not a frame'].join('\n');
    expect(mapStackTrace(stack)).toBe(stack);
  });
});

describe('the logger', () => {
  it('logs an error with its stack and location mapped, and leaves the error itself alone', () => {
    const writes: string[] = [];
    for (const stream of [process.stdout, process.stderr]) {
      vi.spyOn(stream, 'write').mockImplementation((chunk: string | Uint8Array) => {
        writes.push(String(chunk));
        return true;
      });
    }
    const error = Object.assign(new Error('boom: disk full'), { code: 'ENOSPC' });
    error.stack = rawStack;
    createLogger('ERROR').error('unexpected error', { error });
    const line = JSON.parse(writes.join('').trim().split('\n').at(-1)!);
    expect(line.error).toMatchObject({ name: 'Error', message: 'boom: disk full', code: 'ENOSPC', location: 'src/fixture.ts:6' });
    expect([line.error.stack].flat().join('\n')).toContain('(src/fixture.ts:9:10)');
    expect(error.stack).toBe(rawStack);
  });

  it('maps an error cause too, and keeps the error class', () => {
    class StoreError extends Error {}
    const cause = new Error('inner');
    cause.stack = rawStack;
    const mapped = sourceMappedError(new StoreError('outer', { cause }));
    expect(mapped).toBeInstanceOf(StoreError);
    expect((mapped.cause as Error).stack).toContain('src/fixture.ts:6:9');
  });
});
