/**
 * `osls package` of serverless.yml: the CloudFormation template it generates (HTTP API, routes, function, log
 * group) and the zip it builds (an ESM bundle plus better-sqlite3 in node_modules), then the bundled handler
 * loaded from the unzipped artifact in a plain Node process, the way the Lambda runtime loads it, answering
 * `GET /v2/`.
 *
 * Offline: dummy AWS credentials, no AWS call; the npm install serverless-esbuild runs for the external
 * better-sqlite3 is served from the npm cache the project's own install filled.
 *
 * The packaging runs in a scratch copy of the service (top-level files copied, folders symlinked), so it writes
 * neither `.esbuild/` nor `.serverless/` into the work tree, and never meets a concurrent `npm run package` there.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { inflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHttpApiEvent } from '../../shared/http/lambda-event.js';
import { scratchDir } from '../support/scratch.js';

const run = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** What is left out of the scratch copy of the service: VCS, local state and earlier build output. */
const NOT_COPIED = new Set(['.git', '.serverless', '.esbuild', '.data', 'coverage', 'dist']);
const DUMMY_AWS = { AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'x', AWS_REGION: 'us-east-1' };

interface CfnResource {
  Type: string;
  Properties: Record<string, any>;
}

interface ZipEntry {
  name: string;
  size: number;
  read(): Buffer;
}

/** Reads a zip's central directory (no zip64, stored or deflated entries: what serverless-esbuild writes). */
function readZip(zip: Buffer): ZipEntry[] {
  let eocd = -1;
  for (let i = zip.length - 22; i >= Math.max(0, zip.length - 22 - 0xffff); i--) {
    if (zip.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error('no end-of-central-directory record: not a zip');
  const count = zip.readUInt16LE(eocd + 10);
  let p = zip.readUInt32LE(eocd + 16);
  const entries: ZipEntry[] = [];
  for (let n = 0; n < count; n++) {
    if (zip.readUInt32LE(p) !== 0x02014b50) throw new Error(`bad central directory entry at ${p}`);
    const method = zip.readUInt16LE(p + 10);
    const compressed = zip.readUInt32LE(p + 20);
    const size = zip.readUInt32LE(p + 24);
    const nameLength = zip.readUInt16LE(p + 28);
    const local = zip.readUInt32LE(p + 42);
    const name = zip.toString('utf8', p + 46, p + 46 + nameLength);
    if (compressed === 0xffffffff || size === 0xffffffff || local === 0xffffffff) throw new Error(`zip64 entry ${name} not supported`);
    p += 46 + nameLength + zip.readUInt16LE(p + 30) + zip.readUInt16LE(p + 32);
    entries.push({
      name,
      size,
      read: () => {
        if (zip.readUInt32LE(local) !== 0x04034b50) throw new Error(`bad local header for ${name}`);
        const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
        const raw = zip.subarray(start, start + compressed);
        const data = method === 0 ? raw : method === 8 ? inflateRawSync(raw) : undefined;
        if (!data) throw new Error(`${name}: compression method ${method} not supported`);
        if (data.length !== size) throw new Error(`${name}: ${data.length} bytes inflated, ${size} expected`);
        return data;
      },
    });
  }
  return entries;
}

/** A copy of the service to package: top-level files copied, folders (node_modules, functions, shared…) linked. */
function serviceCopy(into: string): string {
  const dir = join(into, 'service');
  mkdirSync(dir);
  for (const name of readdirSync(ROOT)) {
    if (NOT_COPIED.has(name)) continue;
    const from = join(ROOT, name);
    if (lstatSync(from).isDirectory()) symlinkSync(from, join(dir, name), 'dir');
    else copyFileSync(from, join(dir, name));
  }
  return dir;
}

const kb = (n: number) => `${(n / 1024).toFixed(0)} KiB`;

let work: string;
let outDir: string;
let template: { Resources: Record<string, CfnResource> };
let zip: ZipEntry[];
let zipBytes: number;

const resources = (type: string) => Object.values(template.Resources).filter((r) => r.Type === type);

beforeAll(async () => {
  work = scratchDir('sls-package-');
  outDir = join(work, 'out');
  const service = serviceCopy(work);
  const started = performance.now();
  try {
    await run(process.execPath, [join(ROOT, 'node_modules/osls/bin/serverless.js'), 'package', '--stage', 'ci', '--package', outDir], {
      cwd: service,
      env: { ...process.env, ...DUMMY_AWS, AWS_PROFILE: '' },
      maxBuffer: 16 * 1024 * 1024,
    });
  } catch (e) {
    const err = e as Error & { stdout?: string; stderr?: string };
    throw new Error(`osls package failed: ${err.message}\n--- stdout\n${err.stdout}\n--- stderr\n${err.stderr}`);
  }
  const seconds = (performance.now() - started) / 1000;
  template = JSON.parse(readFileSync(join(outDir, 'cloudformation-template-update-stack.json'), 'utf8'));
  const zipFile = readFileSync(join(outDir, 'pullthrough.zip'));
  zipBytes = zipFile.length;
  zip = readZip(zipFile);
  const bundle = zip.find((e) => e.name === 'functions/registry.mjs');
  // The addon's Node ABI (NODE_MODULE_VERSION): the build machine's today; Lambda nodejs22.x loads only 127.
  const addon = zip.find((e) => e.name.endsWith('/better_sqlite3.node'));
  const abi = addon ? /node_register_module_v(\d+)/.exec(addon.read().toString('latin1'))?.[1] : undefined;
  console.log(
    `osls package: ${seconds.toFixed(1)} s; pullthrough.zip ${kb(zipBytes)}, ${zip.length} files; ` +
      `functions/registry.mjs ${bundle ? kb(bundle.size) : 'missing'}; better_sqlite3.node NODE_MODULE_VERSION ${abi ?? '?'} (nodejs22.x needs 127)`,
  );
}, 240_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('serverless.yml packaged with osls + serverless-esbuild', () => {
  it('declares an HTTP API with ANY /v2/{proxy+} and ANY /v2/ routes to the registry function', () => {
    expect(resources('AWS::ApiGatewayV2::Api')).toHaveLength(1);
    const routeKeys = resources('AWS::ApiGatewayV2::Route').map((r) => r.Properties.RouteKey);
    expect(routeKeys).toEqual(expect.arrayContaining(['ANY /v2/{proxy+}', 'ANY /v2/']));
    const [integration] = resources('AWS::ApiGatewayV2::Integration');
    expect(integration.Properties.PayloadFormatVersion).toBe('2.0');
    expect(integration.Properties.IntegrationUri).toEqual({ 'Fn::GetAtt': ['RegistryLambdaFunction', 'Arn'] });
  });

  it('declares the registry function: nodejs22.x, the bundled handler, 1024 MB, 29 s, embedded store in /tmp', () => {
    const fn = template.Resources.RegistryLambdaFunction;
    expect(fn.Type).toBe('AWS::Lambda::Function');
    expect(fn.Properties).toMatchObject({
      Runtime: 'nodejs22.x',
      Handler: 'functions/registry.handler',
      Architectures: ['x86_64'],
      MemorySize: 1024,
      Timeout: 29,
    });
    expect(fn.Properties.Environment.Variables).toMatchObject({ PULLTHROUGH_LOG_LEVEL: 'INFO', PULLTHROUGH_DATA_DIR: '/tmp/pullthrough' });
  });

  it('keeps the function logs 14 days', () => {
    const groups = resources('AWS::Logs::LogGroup');
    expect(groups.map((g) => g.Properties.LogGroupName)).toContain('/aws/lambda/pullthrough-ci-registry');
    for (const g of groups) expect(g.Properties.RetentionInDays).toBe(14);
  });

  it('zips an ESM bundle with better-sqlite3 (and its native binary) beside it, and no AWS SDK', () => {
    const names = zip.map((e) => e.name);
    expect(names).toContain('functions/registry.mjs');
    expect(names).toContain('functions/registry.mjs.map');
    expect(names).toContain('node_modules/better-sqlite3/package.json');
    expect(names).toContain('node_modules/better-sqlite3/build/Release/better_sqlite3.node');
    expect(names.filter((n) => n.startsWith('node_modules/@aws-sdk/'))).toEqual([]);
    // No SQLite sources or build leftovers: only what runs.
    expect(names.filter((n) => /\.(c|cpp|h|o|a)$/.test(n))).toEqual([]);
    const bundle = zip.find((e) => e.name === 'functions/registry.mjs')!.read().toString('utf8');
    expect(bundle).toMatch(/from\s*["']better-sqlite3["']/);
    expect(zipBytes).toBeLessThan(10 * 1024 * 1024);
  });

  it('loads from the unzipped artifact in plain Node and answers GET /v2/ with 200 and the API version header', async () => {
    // The Lambda layout: the zip in the task root, the AWS SDK provided outside it by the runtime.
    const task = join(work, 'lambda/task');
    for (const e of zip) {
      if (e.name.endsWith('/')) continue;
      mkdirSync(dirname(join(task, e.name)), { recursive: true });
      writeFileSync(join(task, e.name), e.read());
    }
    mkdirSync(join(work, 'lambda/node_modules'), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules/@aws-sdk'), join(work, 'lambda/node_modules/@aws-sdk'), 'dir');

    const eventFile = join(work, 'event.json');
    const resultFile = join(work, 'result.json');
    writeFileSync(eventFile, JSON.stringify(buildHttpApiEvent({ method: 'GET', path: '/v2/', headers: { 'User-Agent': 'serverless-package-test' } })));
    const invoke = `
      import { readFileSync, writeFileSync } from 'node:fs';
      const { handler } = await import(process.env.PT_BUNDLE);
      const context = { awsRequestId: 'test', functionName: 'pullthrough-ci-registry', functionVersion: '$LATEST',
        memoryLimitInMB: '1024', invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:pullthrough-ci-registry',
        getRemainingTimeInMillis: () => 29000 };
      const result = await handler(JSON.parse(readFileSync(process.env.PT_EVENT, 'utf8')), context);
      writeFileSync(process.env.PT_RESULT, JSON.stringify(result));
      process.exit(0);
    `;
    const fnEnv = template.Resources.RegistryLambdaFunction.Properties.Environment.Variables as Record<string, string>;
    try {
      await run(process.execPath, ['--input-type=module', '-e', invoke], {
        cwd: task,
        // Only what the function would see: its template environment (data dir moved to scratch) and a region.
        env: {
          PATH: process.env.PATH,
          ...fnEnv,
          ...DUMMY_AWS,
          PULLTHROUGH_DATA_DIR: join(work, 'lambda/data'),
          LAMBDA_TASK_ROOT: task,
          PT_BUNDLE: pathToFileURL(join(task, 'functions/registry.mjs')).href,
          PT_EVENT: eventFile,
          PT_RESULT: resultFile,
        },
        timeout: 30_000,
      });
    } catch (e) {
      const err = e as Error & { stdout?: string; stderr?: string };
      throw new Error(`the bundled handler failed: ${err.message}\n--- stdout\n${err.stdout}\n--- stderr\n${err.stderr}`);
    }
    const res = JSON.parse(readFileSync(resultFile, 'utf8')) as { statusCode: number; headers: Record<string, string>; body: string };
    expect(res.statusCode).toBe(200);
    expect(res.headers['Docker-Distribution-API-Version']).toBe('registry/2.0');
    expect(Buffer.from(res.body, 'base64').toString()).toBe('{}');
  }, 60_000);
});
