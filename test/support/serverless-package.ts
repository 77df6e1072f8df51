/**
 * `osls package` of serverless.yml, offline, and reading what it wrote: the CloudFormation templates and the
 * per-function zips. Used by the unit tier's package checks (test/unit/serverless-package.test.ts) and by the
 * deployed-shape tier (test/deployed/), which runs the zips as Lambda functions.
 *
 * Offline: dummy AWS credentials, no npm install (nothing is external to the bundles). Each packaging runs in a
 * scratch copy of the service (top-level files copied, folders symlinked), so it writes neither `.esbuild/` nor
 * `.serverless/` into the work tree, and never meets a concurrent `npm run package` there.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { inflateRawSync } from 'node:zlib';

const run = promisify(execFile);
/** The repository root (the service serverless.yml describes). */
export const ROOT = resolve(import.meta.dirname, '../..');
/** What is left out of the scratch copy of the service: VCS, local state and earlier build output. */
const NOT_COPIED = new Set(['.git', '.serverless', '.esbuild', '.data', 'coverage', 'dist']);
/** Credentials and region for packaging: osls needs some, and never uses them offline. */
export const DUMMY_AWS = { AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'x', AWS_REGION: 'us-east-1' };

/** The KMS key of {@link EVERY_OPTION}'s token key. */
export const TOKEN_KEY_KMS_KEY = 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
/** The SNS topic of {@link EVERY_OPTION}'s alarms. */
export const ALARM_TOPIC = 'arn:aws:sns:us-east-1:123456789012:pullthrough-alarms';
/**
 * `osls package` arguments setting every optional parameter: a custom domain, an EventBridge bus for `Tag Moved`
 * events, anonymous clients allowed, a token key in SSM encrypted with a customer managed KMS key, another
 * upstream secrets prefix, an SNS topic for the alarms.
 */
export const EVERY_OPTION = [
  ...['--param', 'domainName=registry.example.com', '--param', 'certificateArn=arn:aws:acm:us-east-1:123456789012:certificate/abc'],
  ...['--param', 'eventBus=platform-events'],
  ...['--param', 'allowAnonymousClients=true'],
  ...['--param', 'tokenKey=ssm:/pullthrough/token-key', '--param', `tokenKeyKmsKeyArn=${TOKEN_KEY_KMS_KEY}`],
  ...['--param', 'upstreamSecretsPrefix=registry/upstreams/'],
  ...['--param', `alarmTopicArn=${ALARM_TOPIC}`],
];

/** One resource of a CloudFormation template. */
export interface CfnResource {
  Type: string;
  Properties: Record<string, any>;
  Condition?: string;
  DependsOn?: string | string[];
  [attribute: string]: unknown;
}
/** A CloudFormation template (the sections the tests read). */
export interface CfnTemplate {
  Resources: Record<string, CfnResource>;
  Conditions?: Record<string, unknown>;
  Outputs?: Record<string, { Value: unknown; Condition?: string; [k: string]: unknown }>;
  [section: string]: unknown;
}

/** One file of a zip: its name, inflated size in bytes, and its bytes on demand. */
export interface ZipEntry {
  name: string;
  size: number;
  read(): Buffer;
}

/** Reads a zip's central directory (no zip64, stored or deflated entries: what serverless-esbuild writes). */
export function readZip(zip: Buffer): ZipEntry[] {
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

/** Writes every file of `entries` under `dir` (created); returns `dir`. */
export function unzipInto(entries: ZipEntry[], dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (const e of entries) {
    if (e.name.endsWith('/')) continue;
    const to = resolve(dir, e.name);
    if (!to.startsWith(`${resolve(dir)}/`)) throw new Error(`zip entry ${e.name} points outside the task root`);
    mkdirSync(dirname(to), { recursive: true });
    writeFileSync(to, e.read());
  }
  return dir;
}

/** A copy of the service to package: top-level files copied, folders (node_modules, functions, shared…) linked. */
function serviceCopy(into: string): string {
  const dir = join(into, 'service');
  mkdirSync(dir, { recursive: true });
  for (const name of readdirSync(ROOT)) {
    if (NOT_COPIED.has(name)) continue;
    const from = join(ROOT, name);
    if (lstatSync(from).isDirectory()) symlinkSync(from, join(dir, name), 'dir');
    else copyFileSync(from, join(dir, name));
  }
  return dir;
}

/** What `osls package` wrote. */
export interface Packaged {
  /** The directory it wrote into (`--package`). */
  out: string;
  /** `cloudformation-template-update-stack.json`: the stack. */
  template: CfnTemplate;
  /** `cloudformation-template-create-stack.json`: the first stack `serverless deploy` creates (its deployment bucket). */
  createTemplate: CfnTemplate;
  /** Every `<function>.zip`, by file name without `.zip`: its size in bytes and its entries. */
  zips: Record<string, { bytes: number; entries: ZipEntry[] }>;
  seconds: number;
}

/**
 * `osls package --stage ci --package <into>/out ...extraArgs` of a scratch copy of the service in `into`, with
 * `files` (top-level file name → text) written over the copied ones (e.g. another pullthrough.config.yml).
 * @throws Error with osls's output when it fails.
 */
export async function oslsPackage(into: string, extraArgs: string[] = [], files: Record<string, string> = {}): Promise<Packaged> {
  const service = serviceCopy(into);
  for (const [name, text] of Object.entries(files)) {
    if (name.includes('/')) throw new Error(`${name}: only top-level files can be replaced`);
    writeFileSync(join(service, name), text);
  }
  const out = join(into, 'out');
  const started = performance.now();
  try {
    await run(process.execPath, [join(ROOT, 'node_modules/osls/bin/serverless.js'), 'package', '--stage', 'ci', '--package', out, ...extraArgs], {
      cwd: service,
      env: { ...process.env, ...DUMMY_AWS, AWS_PROFILE: '' },
      maxBuffer: 16 * 1024 * 1024,
      // It takes 5–30 s on a busy 2-core machine; a bundling error has been seen to hang it instead of failing.
      timeout: 150_000,
      killSignal: 'SIGKILL',
    });
  } catch (e) {
    const err = e as Error & { stdout?: string; stderr?: string };
    throw new Error(`osls package ${extraArgs.join(' ')} failed: ${err.message}\n--- stdout\n${err.stdout}\n--- stderr\n${err.stderr}`);
  }
  const seconds = (performance.now() - started) / 1000;
  const readTemplate = (file: string) => JSON.parse(readFileSync(join(out, file), 'utf8')) as CfnTemplate;
  const zips: Packaged['zips'] = {};
  for (const file of readdirSync(out).filter((f) => f.endsWith('.zip'))) {
    const bytes = readFileSync(join(out, file));
    zips[file.slice(0, -'.zip'.length)] = { bytes: bytes.length, entries: readZip(bytes) };
  }
  return {
    out,
    template: readTemplate('cloudformation-template-update-stack.json'),
    createTemplate: readTemplate('cloudformation-template-create-stack.json'),
    zips,
    seconds,
  };
}
