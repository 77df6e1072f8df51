/**
 * moto (`moto_server`, the Python AWS stand-in, 5.x) on a free loopback port: one endpoint for CloudFormation,
 * S3, DynamoDB, IAM, STS, Lambda (metadata only: it cannot run code without Docker) and EventBridge.
 *
 * Why moto for the deployed-shape tier, rather than DynamoDB Local + s3rver (the e2e tier's stand-ins): its
 * CloudFormation deploys the packaged template itself, as `serverless deploy` would (table, bucket, roles with
 * their policies resolved, functions with their resolved environment, the schedule), so the tier tests the
 * template and not a copy of its properties. One process starts in about a second (DynamoDB Local: 3–8 s).
 *
 * moto's own IAM enforcement is left off: it authorizes DynamoDB, SSM or EventBridge requests against the
 * resource `*` (so a policy scoped to the table denies everything) and fails on presigned S3 URLs (no
 * Authorization header → HTTP 500). ./iam-gate.ts enforces the roles' policies in front of it instead.
 */
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { logTail, spawnTracked, startWithRetries } from '../child-processes.js';
import { scratchDir } from '../scratch.js';
import { pickFreePort } from '../upstream-registry.js';

/** The region and account moto answers for (its default account). */
export const MOTO_REGION = 'us-east-1';
export const MOTO_ACCOUNT = '123456789012';

/** A running moto_server. */
export interface Moto {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  pid: number;
  /** Its request log and errors (tracebacks of what it does not support); kept after stop(). */
  logPath: string;
  /** SIGTERM, then SIGKILL after 3 s. Idempotent. */
  stop(): Promise<void>;
}

/** Starts `moto_server` (found on PATH) and resolves once it answers; a lost port race is retried. */
export function startMoto(opts: { startTimeoutMs?: number } = {}): Promise<Moto> {
  return startWithRetries(3, () => startOnce(opts.startTimeoutMs ?? 20_000));
}

async function startOnce(startTimeoutMs: number): Promise<Moto> {
  const port = await pickFreePort();
  const dir = scratchDir('moto-');
  const logPath = join(dir, 'moto.log');
  const logFd = openSync(logPath, 'a');
  const proc = spawnTracked('moto_server', ['-H', '127.0.0.1', '-p', String(port)], {
    cwd: dir,
    stdio: ['ignore', logFd, logFd],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? dir, PYTHONUNBUFFERED: '1' },
  });
  closeSync(logFd);
  const endpoint = `http://127.0.0.1:${port}`;
  const stop = async () => {
    await proc.stop(3000, 2000);
  };
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    if (proc.exit || Date.now() > deadline) {
      await stop();
      throw new Error(`moto_server did not answer on ${endpoint} (is moto[server] installed?); log tail:\n${logTail(logPath)}`);
    }
    const up = await fetch(`${endpoint}/moto-api/data.json`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false);
    if (up) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    endpoint,
    pid: proc.child.pid!,
    logPath,
    stop,
  };
}
