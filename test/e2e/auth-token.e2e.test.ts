/**
 * Client auth in token mode with real clients: the real local server (`bin/server.ts`) with two users — alice
 * may pull the `local` rule, bob only `other` — in front of Debian's docker-registry. skopeo with
 * `--src-creds` and after `skopeo login` pulls (Basic → Bearer token flow); without credentials it fails and
 * a plain fetch shows the 401 challenge; bob gets 403 DENIED on `local/...`. podman logs in and pulls;
 * containerd's ctr pulls through a hosts.toml mirror with credentials (the OAuth2 POST form, `?ns=` names).
 * No password and no token reaches the server's log.
 */
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword } from '../../shared/auth/passwords.js';
import { assertCtrOk, parseImagesList, SNAPSHOTTER, startContainerd, writeHostsToml, type Containerd } from '../support/containerd.js';
import { pushSinglePlatformImage, type PushedImage } from '../support/images.js';
import { startLocalServer, type LocalServer } from '../support/local-server.js';
import { assertPodmanOk, createPodmanSandbox, type PodmanSandbox } from '../support/podman.js';
import { scratchDir } from '../support/scratch.js';
import { assertSkopeoOk, runSkopeo, skopeoCopy, type SkopeoResult } from '../support/skopeo.js';
import { startUpstreamRegistry, type UpstreamRegistry } from '../support/upstream-registry.js';

const ALICE = { user: 'alice', password: 'alice-e2e-Pa55-4c1d' };
const BOB = { user: 'bob', password: 'bob-e2e-Pa55-77e0' };
const CALL_TIMEOUT_MS = 60_000;

let upstream: UpstreamRegistry;
let cache: LocalServer;
let image: PushedImage;
const issuedTokens: string[] = [];

const creds = (u: { user: string; password: string }) => `${u.user}:${u.password}`;
const basic = (u: { user: string; password: string }) => `Basic ${Buffer.from(creds(u)).toString('base64')}`;

/** Asserts a skopeo `dir:` copy holds the pushed manifest and all its blobs. */
function expectCopied(dir: string): void {
  const manifest = readFileSync(join(dir, 'manifest.json'));
  expect(manifest.equals(Buffer.from(image.manifest))).toBe(true);
  const files = readdirSync(dir);
  for (const b of image.blobs) expect(files).toContain(b.digest.slice('sha256:'.length));
}

async function token(u: { user: string; password: string }, scope: string): Promise<string> {
  const res = await fetch(`${cache.url}/token?service=${cache.host}&scope=${encodeURIComponent(scope)}`, { headers: { authorization: basic(u) } });
  expect(res.status).toBe(200);
  const t = ((await res.json()) as { token: string }).token;
  issuedTokens.push(t);
  return t;
}

beforeAll(async () => {
  upstream = await startUpstreamRegistry();
  image = await pushSinglePlatformImage(upstream.url, 'team/app', 'v1', { format: 'oci', arch: 'amd64', layerSources: ['/usr/share/common-licenses'] });
  cache = await startLocalServer({
    auth: {
      mode: 'token',
      users: [
        { username: ALICE.user, passwordHash: await hashPassword(ALICE.password), prefixes: ['local'] },
        { username: BOB.user, passwordHash: await hashPassword(BOB.password), prefixes: ['other'] },
      ],
    },
    rules: [
      { prefix: 'local', upstream: upstream.url },
      { prefix: 'other', upstream: 'http://127.0.0.1:9' },
    ],
  });
});

afterAll(async () => {
  await cache?.stop();
  await upstream?.stop();
  if (cache) {
    const log = readFileSync(cache.logPath, 'utf8');
    for (const secret of [ALICE.password, BOB.password, ...issuedTokens.map((t) => t.split('.')[2])]) expect(log).not.toContain(secret);
  }
});

describe('skopeo against the cache in token mode', () => {
  it('copies with --src-creds (Basic → token → Bearer pulls)', async () => {
    const dest = scratchDir('auth-copy-');
    assertSkopeoOk(await skopeoCopy(`${cache.host}/local/team/app:v1`, dest, { creds: creds(ALICE), timeoutMs: CALL_TIMEOUT_MS }));
    expectCopied(dest);
  });

  it('skopeo login stores the credentials, and a copy with that auth file pulls', async () => {
    const authFile = join(scratchDir('auth-file-'), 'auth.json');
    assertSkopeoOk(await runSkopeo(['login', '--tls-verify=false', '--authfile', authFile, '-u', ALICE.user, '-p', ALICE.password, cache.host], CALL_TIMEOUT_MS));
    expect(Object.keys((JSON.parse(readFileSync(authFile, 'utf8')) as { auths: object }).auths)).toEqual([cache.host]);
    const dest = scratchDir('auth-login-copy-');
    assertSkopeoOk(
      await runSkopeo(['--insecure-policy', 'copy', '--retry-times', '0', '--src-tls-verify=false', '--src-authfile', authFile, `docker://${cache.host}/local/team/app:v1`, `dir:${dest}`], CALL_TIMEOUT_MS),
    );
    expectCopied(dest);
  });

  it('a wrong password fails skopeo login', async () => {
    const authFile = join(scratchDir('auth-file-'), 'auth.json');
    const r = await runSkopeo(['login', '--tls-verify=false', '--authfile', authFile, '-u', ALICE.user, '-p', 'not-the-password', cache.host], CALL_TIMEOUT_MS);
    expect(r.code).not.toBe(0);
  });

  it('without credentials skopeo fails, and a plain request gets 401 with the Bearer challenge', async () => {
    const r: SkopeoResult = await skopeoCopy(`${cache.host}/local/team/app:v1`, scratchDir('auth-anon-'), { timeoutMs: CALL_TIMEOUT_MS });
    expect(r.code).not.toBe(0);
    expect(r.stderr.toLowerCase()).toMatch(/unauthorized|authentication required/);
    const res = await fetch(`${cache.url}/v2/local/team/app/manifests/v1`);
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(`Bearer realm="http://${cache.host}/token",service="${cache.host}",scope="repository:local/team/app:pull"`);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('UNAUTHORIZED');
    const ping = await fetch(`${cache.url}/v2/`);
    expect(ping.status).toBe(401);
    expect(ping.headers.get('www-authenticate')).toBe(`Bearer realm="http://${cache.host}/token",service="${cache.host}"`);
  });

  it('a user limited to another prefix gets 403 DENIED on local/...', async () => {
    const r = await skopeoCopy(`${cache.host}/local/team/app:v1`, scratchDir('auth-bob-'), { creds: creds(BOB), timeoutMs: CALL_TIMEOUT_MS });
    expect(r.code).not.toBe(0);
    expect(r.stderr.toLowerCase()).toMatch(/denied/);
    const t = await token(BOB, 'repository:local/team/app:pull');
    const res = await fetch(`${cache.url}/v2/local/team/app/manifests/v1`, { headers: { authorization: `Bearer ${t}` } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0].code).toBe('DENIED');
    // alice's token for the same scope opens it
    const ok = await fetch(`${cache.url}/v2/local/team/app/manifests/v1`, {
      headers: { authorization: `Bearer ${await token(ALICE, 'repository:local/team/app:pull')}`, accept: image.mediaType },
    });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('docker-content-digest')).toBe(image.digest);
  });
});

describe('podman against the cache in token mode', () => {
  let sandbox: PodmanSandbox;
  beforeAll(() => {
    sandbox = createPodmanSandbox();
  });
  afterAll(() => sandbox?.remove());

  it('podman login, then pull with the stored credentials', async () => {
    assertPodmanOk(await sandbox.run(['login', '--tls-verify=false', '-u', ALICE.user, '-p', ALICE.password, cache.host], CALL_TIMEOUT_MS));
    const id = await sandbox.pull(`${cache.host}/local/team/app:v1`, { timeoutMs: CALL_TIMEOUT_MS });
    expect(`sha256:${id}`).toBe(image.blobs[0].digest);
  });

  it('podman pull --creds for a user of another prefix is denied', async () => {
    const other = createPodmanSandbox();
    try {
      await expect(other.pull(`${cache.host}/local/team/app:v1`, { creds: creds(BOB), timeoutMs: CALL_TIMEOUT_MS })).rejects.toThrow(/denied/i);
    } finally {
      other.remove();
    }
  });
});

describe('containerd ctr through a hosts.toml mirror with credentials', () => {
  let containerd: Containerd;
  let hostsDir: string;
  beforeAll(async () => {
    containerd = await startContainerd();
    // The reference names the upstream; the cache is its mirror (`?ns=<upstream host>` → the `local` rule).
    hostsDir = writeHostsToml(new URL(upstream.url).host, upstream.url, [{ url: cache.url, capabilities: ['pull', 'resolve'] }]);
  });
  afterAll(async () => {
    await containerd?.destroy();
    if (hostsDir) rmSync(hostsDir, { recursive: true, force: true });
  });

  it('the mirror issues a token for the bare name (POST form) and serves the pull', async () => {
    const since = readFileSync(cache.logPath).length;
    const ref = `${new URL(upstream.url).host}/team/app:v1`;
    assertCtrOk(
      await containerd.ctr(['images', 'pull', '--hosts-dir', hostsDir, '--user', creds(ALICE), '--platform', 'linux/amd64', '--snapshotter', SNAPSHOTTER, ref], {
        timeoutMs: CALL_TIMEOUT_MS,
      }),
    );
    expect(parseImagesList(assertCtrOk(await containerd.ctr(['images', 'ls'])).stdout).map((i) => [i.ref, i.digest])).toContainEqual([ref, image.digest]);
    // Served by the mirror (not the fallback server): containerd's requests to the cache got a token and succeeded.
    await expect
      .poll(() => {
        const lines = readFileSync(cache.logPath).subarray(since).toString('utf8').split('\n').filter((l) => l.startsWith('{'));
        const reqs = lines
          .map((l) => JSON.parse(l) as { message: string; method?: string; path?: string; query?: string; status?: number })
          .filter((l) => l.message === 'request');
        const ns = new URL(upstream.url).host;
        return {
          // containerd sends the OAuth2 password form when it has credentials
          tokenByPost: reqs.some((r) => r.method === 'POST' && r.path === '/token' && r.status === 200),
          manifest: reqs.some((r) => r.path === '/v2/team/app/manifests/v1' && new URLSearchParams(r.query).get('ns') === ns && r.status === 200),
        };
      }, { timeout: 3000 })
      .toEqual({ tokenByPost: true, manifest: true });
  });
});
