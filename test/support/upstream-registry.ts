/**
 * A real upstream registry for e2e tests and benchmarks: the Debian-packaged
 * CNCF distribution 2.8 (`/usr/bin/docker-registry`), filesystem storage,
 * plain HTTP on 127.0.0.1.
 */
import { existsSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import http from 'node:http';
import { logTail, spawnTracked, startWithRetries } from './child-processes.js';
import { scratchDir } from './scratch.js';

/** Path of the distribution binary (Debian package `docker-registry`). */
export const REGISTRY_BIN = '/usr/bin/docker-registry';

/**
 * A ready-made htpasswd line for tests that need an authenticated upstream:
 * user {@link TEST_REGISTRY_USER}, password {@link TEST_REGISTRY_PASSWORD}
 * (bcrypt, cost 5 so auth stays fast). Pass it as `startUpstreamRegistry({ htpasswd: TEST_HTPASSWD })`.
 */
export const TEST_REGISTRY_USER = 'pullthrough';
/** Password matching {@link TEST_HTPASSWD}. */
export const TEST_REGISTRY_PASSWORD = 'pullthrough-secret';
/** htpasswd file contents (one bcrypt line) for {@link TEST_REGISTRY_USER}:{@link TEST_REGISTRY_PASSWORD}. */
export const TEST_HTPASSWD = `${TEST_REGISTRY_USER}:$2b$05$EFt8rznzA6K91h0mqV3ixuLzJG1ESAd.2492yRf.Pdetbm.UCCGN.\n`;

/** Options for {@link startUpstreamRegistry}. */
export interface UpstreamRegistryOptions {
  /** TCP port on 127.0.0.1; default: a free port picked by binding port 0 (distribution itself cannot listen on :0 and report it). */
  port?: number;
  /**
   * Filesystem storage root. Default: a new dir under the per-process scratch
   * dir (./scratch.ts; deleted after this process ends). Reuse it (with `port`)
   * to restart the same registry after `stop()`.
   */
  dataDir?: string;
  /**
   * Ignored: distribution only redirects blob GETs to pre-signed URLs for
   * cloud storage drivers (s3, gcs, azure...); the filesystem driver has no
   * URLFor support, so blobs are always served inline with a 200.
   */
  redirectBlobs?: boolean;
  /**
   * Enables `auth.htpasswd` (Basic auth, realm "pullthrough-test"). Either an
   * absolute path to an existing htpasswd file, or the file contents
   * (bcrypt lines `user:$2y$...`), e.g. {@link TEST_HTPASSWD}.
   */
  htpasswd?: string;
  /**
   * Enables `auth.token` (Docker token auth) with this realm, service, issuer and `rootcertbundle` (a PEM file
   * path): see ./token-server.ts, whose `realm`, `service`, `issuer` and `certPath` fit here as they are.
   */
  tokenAuth?: { realm: string; service: string; issuer: string; certPath: string };
  /** Readiness timeout in ms (default 10 000). */
  startTimeoutMs?: number;
  /**
   * Turns distribution's access log on (one combined-format line per request it answered, in `logPath`): read it
   * with {@link readAccessLog}, e.g. to compare the requests the cache says it sent with those the registry saw.
   */
  accessLog?: boolean;
}

/** A running upstream registry. `url` has no trailing slash. */
export interface UpstreamRegistry {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** TCP port on 127.0.0.1 */
  port: number;
  /** filesystem storage root (survives stop(); pass it again to restart) */
  dataDir: string;
  /** PID of the docker-registry process */
  pid: number;
  /** generated config.yml */
  configPath: string;
  /** stdout+stderr of the registry (log level warn); kept after stop() */
  logPath: string;
  /** SIGTERM, wait up to 5 s for exit, then SIGKILL. Idempotent. Never removes dataDir. */
  stop(): Promise<void>;
}

/** Returns a currently free TCP port on 127.0.0.1 (bind :0, read, close). */
export async function pickFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not pick a port'))));
    });
  });
}

/** GET url with a short timeout; resolves to the status code, or 0 on a connection error. */
function probe(url: string, timeoutMs = 1000): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
  });
}

function renderConfig(o: { port: number; dataDir: string; htpasswdPath?: string; tokenAuth?: UpstreamRegistryOptions['tokenAuth']; accessLog?: boolean }): string {
  // YAML written by hand: values are paths/ports we control (quoted).
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  formatter: text',
    '  accesslog:',
    `    disabled: ${o.accessLog ? 'false' : 'true'}`,
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(o.dataDir)}`,
    '  delete:',
    '    enabled: true',
    '  cache:',
    '    blobdescriptor: inmemory',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: "127.0.0.1:${o.port}"`,
    // Fixed secret so upload state survives a restart on the same dataDir.
    '  secret: "pullthrough-test-secret"',
    '  headers:',
    '    X-Content-Type-Options: [nosniff]',
  ];
  if (o.htpasswdPath) {
    lines.push('auth:', '  htpasswd:', '    realm: "pullthrough-test"', `    path: ${JSON.stringify(o.htpasswdPath)}`);
  } else if (o.tokenAuth) {
    const t = o.tokenAuth;
    lines.push('auth:', '  token:', `    realm: ${JSON.stringify(t.realm)}`, `    service: ${JSON.stringify(t.service)}`);
    lines.push(`    issuer: ${JSON.stringify(t.issuer)}`, `    rootcertbundle: ${JSON.stringify(t.certPath)}`);
  }
  return lines.join('\n') + '\n';
}

/**
 * Starts `/usr/bin/docker-registry serve <config.yml>` and resolves once
 * `GET /v2/` answers 200 (or 401 with htpasswd), polling every 50 ms for at
 * most `startTimeoutMs` (10 s). Without an explicit `port`, a bind race is
 * retried up to 3 times with a new port.
 */
export async function startUpstreamRegistry(opts: UpstreamRegistryOptions = {}): Promise<UpstreamRegistry> {
  if (!existsSync(REGISTRY_BIN)) throw new Error(`${REGISTRY_BIN} not found (apt-get install docker-registry)`);
  return startWithRetries(opts.port ? 1 : 3, () => startOnce(opts));
}

async function startOnce(opts: UpstreamRegistryOptions): Promise<UpstreamRegistry> {
  const port = opts.port ?? (await pickFreePort());
  const dataDir = opts.dataDir ?? scratchDir('registry-data-');
  const workDir = scratchDir('registry-run-');
  let htpasswdPath: string | undefined;
  if (opts.htpasswd !== undefined) {
    if (opts.htpasswd.startsWith('/') && !opts.htpasswd.includes('\n') && existsSync(opts.htpasswd)) {
      htpasswdPath = opts.htpasswd;
    } else {
      htpasswdPath = join(workDir, 'htpasswd');
      writeFileSync(htpasswdPath, opts.htpasswd.endsWith('\n') ? opts.htpasswd : opts.htpasswd + '\n');
    }
  }
  const configPath = join(workDir, 'config.yml');
  writeFileSync(configPath, renderConfig({ port, dataDir, htpasswdPath, tokenAuth: opts.tokenAuth, accessLog: opts.accessLog }));
  const logPath = join(workDir, 'registry.log');
  const logFd = openSync(logPath, 'a');
  // Under setpriv --pdeathsig KILL (./child-processes.ts): the registry dies with the thread that spawned it,
  // even when vitest kills its worker without running exit handlers. setpriv execs, so pid is the registry's.
  const proc = spawnTracked(REGISTRY_BIN, ['serve', configPath], {
    stdio: ['ignore', logFd, logFd],
    // Keep distribution from reading REGISTRY_* overrides from our environment.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: workDir },
  });
  closeSync(logFd);

  const url = `http://127.0.0.1:${port}`;
  const ok = opts.htpasswd !== undefined || opts.tokenAuth ? [401, 200] : [200];
  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  let ready = false;
  while (Date.now() < deadline && !proc.exit) {
    const status = await probe(`${url}/v2/`, 500);
    if (ok.includes(status)) {
      ready = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  const stop = async (): Promise<void> => {
    await proc.stop(5000, 2000);
  };

  if (!ready) {
    await stop();
    const exited = proc.exit ? ` (exited code=${proc.exit.code} signal=${proc.exit.signal})` : '';
    throw new Error(`docker-registry did not become ready on ${url}${exited}; log tail:\n${logTail(logPath)}`);
  }
  return { url, port, dataDir, pid: proc.child.pid!, configPath, logPath, stop };
}

/** One request distribution logged in its access log (Apache combined format). `bytes`: body bytes it wrote. */
export interface AccessLogEntry {
  method: string;
  /** Path and query as requested. */
  path: string;
  status: number;
  bytes: number;
  userAgent: string;
}

const ACCESS_LINE = /^\S+ - \S+ \[[^\]]+\] "([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"$/;

/**
 * The requests a registry started with `accessLog: true` has logged so far (its other log lines are skipped).
 * Distribution writes a line once the response is complete.
 */
export function readAccessLog(registry: Pick<UpstreamRegistry, 'logPath'>): AccessLogEntry[] {
  const entries: AccessLogEntry[] = [];
  for (const line of readFileSync(registry.logPath, 'utf8').split('\n')) {
    const m = ACCESS_LINE.exec(line);
    if (m) entries.push({ method: m[1], path: m[2], status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]), userAgent: m[5] });
  }
  return entries;
}
