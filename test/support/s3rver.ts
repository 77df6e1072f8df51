/**
 * An S3 stand-in for tests and benchmarks: s3rver 3.7.1 in a child process on 127.0.0.1.
 *
 * The child runs `node --openssl-legacy-provider` (s3rver's V4 signature code needs the legacy provider, else
 * listing past one page fails), so the test process itself needs no special flag. It listens on port 0 (or
 * `opts.port`) and reports the bound port on stdout, so there is no pick-then-bind race. It is started under
 * `setpriv --pdeathsig KILL` when available, so it dies with the thread that spawned it even when vitest
 * kills its worker without running exit handlers. s3rver does not verify presigned signatures, ignores
 * `If-None-Match: *`, and has no AbortMultipartUpload (DELETE `?uploadId=` answers 405): abandoned parts stay
 * under its directory.
 */
import { closeSync, openSync } from 'node:fs';
import http from 'node:http';
import { join, resolve } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { logTail, spawnTracked } from './child-processes.js';
import { scratchDir } from './scratch.js';

const ROOT = resolve(import.meta.dirname, '../..');
/** s3rver's fixed credentials (its default account). */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

/** The child's program (CommonJS, run with `node -e`; `s3rver` resolves from the project's node_modules). */
const CHILD_SCRIPT = `
const S3rver = require('s3rver');
const [port, directory] = process.argv.slice(1);
new S3rver({ address: '127.0.0.1', port: Number(port), directory, silent: true })
  .run()
  .then((addr) => process.stdout.write('S3RVER_LISTENING ' + addr.port + '\\n'))
  .catch((err) => { console.error(err); process.exit(1); });
process.on('SIGTERM', () => process.exit(0));
`;

/** A running s3rver. */
export interface S3rverInstance {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  /** PID of the node process hosting s3rver. */
  pid: number;
  /** Storage directory (kept after stop; under the per-process scratch dir unless given). */
  directory: string;
  /** SIGTERM by PID, SIGKILL after 5 s. Idempotent. */
  stop(): Promise<void>;
}

/** GET / with a short timeout; resolves true on any HTTP answer. */
function answers(url: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((done) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      done(true);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => done(false));
  });
}

/**
 * Starts s3rver and resolves once it answers HTTP (bounded by `startTimeoutMs`, default 15 000 ms).
 * `port` defaults to a free one chosen by the kernel; `directory` to a new scratch dir.
 */
export async function startS3rver(opts: { port?: number; directory?: string; startTimeoutMs?: number } = {}): Promise<S3rverInstance> {
  const directory = opts.directory ?? scratchDir('s3rver-');
  const logPath = join(scratchDir('s3rver-run-'), 's3rver.log');
  const logFd = openSync(logPath, 'a');
  const nodeArgs = ['--openssl-legacy-provider', '-e', CHILD_SCRIPT, String(opts.port ?? 0), directory];
  const proc = spawnTracked(process.execPath, nodeArgs, { cwd: ROOT, stdio: ['ignore', 'pipe', logFd], env: { ...process.env, NODE_OPTIONS: '' } });
  closeSync(logFd);
  const { child } = proc;

  const stop = async (): Promise<void> => {
    await proc.stop(5000);
  };
  const fail = async (why: string): Promise<never> => {
    await stop();
    throw new Error(`s3rver ${why}; log tail:\n${logTail(logPath)}`);
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 15_000);
  const port = await new Promise<number | undefined>((done) => {
    let out = '';
    const timer = setTimeout(() => done(undefined), Math.max(0, deadline - Date.now()));
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      const m = /S3RVER_LISTENING (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        done(Number(m[1]));
      }
    });
    child.once('exit', () => {
      clearTimeout(timer);
      done(undefined);
    });
  });
  if (!port) return fail('did not report a listening port');
  child.stdout!.resume();
  const endpoint = `http://127.0.0.1:${port}`;
  while (!(await answers(endpoint, 500))) {
    if (Date.now() > deadline || child.exitCode !== null) return fail(`did not answer on ${endpoint}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { endpoint, pid: child.pid!, directory, stop };
}

/** An S3Client configured the way s3rver needs (path-style, checksums only when required, its credentials). */
export function s3ClientFor(endpoint: string): S3Client {
  return new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: S3RVER_CREDENTIALS,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** Creates a bucket (s3rver: idempotent). */
export async function createBucket(client: S3Client, name: string): Promise<void> {
  await client.send(new CreateBucketCommand({ Bucket: name }));
}

/**
 * The environment of a pullthrough process on the AWS backend over local stand-ins: DynamoDB at `dynamodb` (DynamoDB
 * Local, or a proxy in front of it) and S3 at `s3` (s3rver: its credentials, checksums only when required), table
 * `table`, bucket `bucket` (default: the table's name).
 */
export function awsBackendEnv(opts: { dynamodb: string; s3: string; table: string; bucket?: string }): Record<string, string> {
  return {
    PULLTHROUGH_BACKEND: 'aws', PULLTHROUGH_TABLE: opts.table, PULLTHROUGH_BUCKET: opts.bucket ?? opts.table,
    AWS_ENDPOINT_URL_S3: opts.s3, AWS_ENDPOINT_URL_DYNAMODB: opts.dynamodb, AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    AWS_REQUEST_CHECKSUM_CALCULATION: 'WHEN_REQUIRED', AWS_RESPONSE_CHECKSUM_VALIDATION: 'WHEN_REQUIRED',
  };
}
