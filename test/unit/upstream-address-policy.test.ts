/**
 * Upstream redirects cannot reach the cache's own network (issue: an upstream redirect to
 * https://127.0.0.1:<port> opened a TLS connection there; https://169.254.169.254 was attempted): a redirect
 * target, or a host reached through one, is connected to only at a public address unless the rule names it —
 * checked after DNS on the address connected to, and before any byte reaches a client. Also the outbound
 * proxy (HTTPS_PROXY/HTTP_PROXY/NO_PROXY) through a real CONNECT proxy, composed with those checks.
 *
 * Internal services are plain TCP listeners that count connections: "refused" means zero connections. Names
 * other than localhost come from an injected resolver (the DNS answers a rebinding attacker would give cannot be
 * produced by this machine's resolver); IP literals and localhost need no injection.
 */
import { createHash } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import type { LookupAddress } from 'node:dns';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig, readEnvironment } from '../../shared/config.js';
import { buildRuntime } from '../../shared/runtime.js';
import { isPublicAddress } from '../../shared/upstream/address-policy.js';
import { createUpstreamClient, type UpstreamClientOptions } from '../../shared/upstream/client.js';
import { checkedLookup, type Resolver } from '../../shared/upstream/dispatcher.js';
import { UpstreamError } from '../../shared/upstream/errors.js';
import { startConnectProxy } from '../support/connect-proxy.js';
import { createHarness } from '../support/harness.js';
import { seedImage, startFakeUpstream } from '../support/fake-upstream.js';
import { scratchDir } from '../support/scratch.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** An "internal service": a TCP listener on loopback that counts connections and answers a secret. */
async function internalService() {
  const sockets = new Set<Socket>();
  let connections = 0;
  const server = createServer((s) => {
    connections++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.end('HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\ninternal-secret');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  cleanups.push(() => new Promise<void>((r) => (sockets.forEach((s) => s.destroy()), server.close(() => r()))));
  return { port, get connections() { return connections; } };
}

/** An upstream that answers every request with a redirect to `location(path)`, recording paths. */
async function redirectingUpstream(location: (path: string) => string) {
  const seen: string[] = [];
  const server = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    seen.push(`${req.method} ${req.url}`);
    res.writeHead(307, { Location: location(req.url ?? '/') }).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cleanups.push(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
  return { url, seen };
}

const DIGEST = `sha256:${createHash('sha256').update('layer').digest('hex')}` as never;
const ruleFor = (upstream: string, extra: Record<string, unknown> = {}) => parseConfig({ rules: [{ prefix: 'p', upstream, ...extra }] }).rules[0];
/** Each operation of the client that follows redirects. */
const operations: Array<[string, (c: ReturnType<typeof createUpstreamClient>) => Promise<unknown>]> = [
  ['manifest GET', (c) => c.getManifest('team/app', 'v1', 1 << 20)],
  ['manifest HEAD', (c) => c.headManifest('team/app', 'v1')],
  ['blob GET', (c) => c.getBlob('team/app', DIGEST)],
  ['tags list', (c) => c.listTags('team/app', {})],
  ['referrers', (c) => c.getReferrers('team/app', DIGEST, 1 << 20)],
];

async function failureOf(p: Promise<unknown>): Promise<UpstreamError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(UpstreamError);
  expect((err as UpstreamError).failure).toBe('unavailable');
  return err as UpstreamError;
}

describe('isPublicAddress (ipaddr.js ranges)', () => {
  it.each([
    ['8.8.8.8', true], ['2606:4700::1111', true], ['::ffff:8.8.8.8', true], ['64:ff9b::808:808', true],
    ['127.0.0.1', false], ['127.1.2.3', false], ['::1', false], ['::ffff:127.0.0.1', false], ['::ffff:7f00:1', false],
    ['10.0.0.1', false], ['172.16.5.4', false], ['192.168.1.1', false], ['100.64.0.1', false], ['100.100.100.200', false],
    ['169.254.169.254', false], ['fe80::1', false], ['fd00:ec2::254', false], ['fc00::1', false], ['0.0.0.0', false],
    ['::', false], ['192.0.0.192', false], ['224.0.0.1', false], ['255.255.255.255', false], ['64:ff9b::a9fe:a9fe', false],
    ['2002:7f00:1::1', false], ['not-an-ip', false],
  ])('%s → %s', (address, expected) => expect(isPublicAddress(address as string)).toBe(expected));
});

describe('redirect targets at internal addresses are refused', () => {
  it.each(operations)('%s: a redirect to https://127.0.0.1:<port> opens no connection there', async (_name, call) => {
    const internal = await internalService();
    const up = await redirectingUpstream(() => `https://127.0.0.1:${internal.port}/steal`);
    const err = await failureOf(call(createUpstreamClient(ruleFor(up.url))));
    expect(err.message).toMatch(/127\.0\.0\.1 is an internal address \(loopback\).*internalHosts/);
    expect(internal.connections).toBe(0);
    expect(up.seen).toHaveLength(1);
  });

  it.each([
    ['https://169.254.169.254/latest/meta-data/', /169\.254\.169\.254 is an internal address \(linkLocal\)/],
    ['https://100.100.100.200/latest/meta-data/', /carrierGradeNat/],
    ['https://10.1.2.3/', /private/],
    ['https://[fd00:ec2::254]/', /uniqueLocal/],
    ['https://[::ffff:127.0.0.1]:1/', /loopback/],
    ['https://localhost:1/', /localhost is an internal address/],
    ['https://0.0.0.0:1/', /unspecified/],
  ])('refuses %s before connecting', async (target, message) => {
    const up = await redirectingUpstream(() => target);
    expect((await failureOf(createUpstreamClient(ruleFor(up.url)).getBlob('team/app', DIGEST))).message).toMatch(message);
  });

  it('checks the addresses a name resolves to, and connects to none when one is internal (DNS rebinding)', async () => {
    const internal = await internalService();
    const answers: Record<string, LookupAddress[]> = {
      'rebind.test': [{ address: '127.0.0.1', family: 4 }],
      'mixed.test': [{ address: '93.184.216.34', family: 4 }, { address: '10.0.0.7', family: 4 }],
    };
    const lookups: string[] = [];
    const resolve: Resolver = (hostname, cb) => {
      lookups.push(hostname);
      const found = answers[hostname];
      return found ? cb(null, found) : cb(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }), []);
    };
    for (const [host, message] of [['rebind.test', /127\.0\.0\.1 is an internal address \(loopback\)/], ['mixed.test', /10\.0\.0\.7 is an internal address \(private\)/]] as const) {
      const up = await redirectingUpstream(() => `https://${host}:${internal.port}/`);
      const opts: UpstreamClientOptions = { resolve };
      expect((await failureOf(createUpstreamClient(ruleFor(up.url), opts).getBlob('team/app', DIGEST))).message).toMatch(message);
    }
    expect(lookups).toEqual(['rebind.test', 'mixed.test']);
    expect(internal.connections).toBe(0);
  });

  it('hands the socket exactly the addresses it checked (no second resolution between check and connect)', async () => {
    const found: LookupAddress[] = [{ address: '93.184.216.34', family: 4 }, { address: '2606:2800:220:1:248:1893:25c8:1946', family: 6 }];
    const lookup = checkedLookup((_h, cb) => cb(null, found));
    const all = await new Promise((r) => lookup('example.test', { all: true }, (err, addresses) => r({ err, addresses })));
    expect(all).toEqual({ err: null, addresses: found });
    const one = await new Promise((r) => lookup('example.test', { family: 6 }, (err, address, family) => r({ err, address, family })));
    expect(one).toEqual({ err: null, address: found[1].address, family: 6 });
  });

  it('a host the rule names (internalHosts) is reached although it is internal', async () => {
    const internal = await internalService();
    const up = await redirectingUpstream(() => `https://localhost:${internal.port}/`);
    // The listener is no TLS server: the handshake fails, but only after the connection was allowed.
    const err = await failureOf(createUpstreamClient(ruleFor(up.url, { internalHosts: [`localhost:${internal.port}`] })).getBlob('team/app', DIGEST));
    expect(err.message).not.toMatch(/internal address/);
    expect(internal.connections).toBe(1);
  });

  it('through the cache: 503 UNAVAILABLE, and no byte of the internal service reaches the client', async () => {
    const internal = await internalService();
    const up = await redirectingUpstream(() => `https://127.0.0.1:${internal.port}/`);
    const h = await createHarness([{ prefix: 'p', upstream: up.url }]);
    cleanups.push(() => h.close());
    for (const path of [`/v2/p/team/app/blobs/${DIGEST}`, '/v2/p/team/app/manifests/v1']) {
      const res = await h.request('GET', path);
      expect(res.status, path).toBe(503);
      expect(h.jsonOf(res).errors[0].code).toBe('UNAVAILABLE');
      expect(h.bodyOf(res)?.toString()).not.toContain('internal-secret');
    }
    expect(internal.connections).toBe(0);
  });
});

describe('outbound proxy (HTTPS_PROXY / HTTP_PROXY / NO_PROXY)', () => {
  it('tunnels upstream requests through the proxy; NO_PROXY hosts connect directly', async () => {
    const proxy = await startConnectProxy();
    cleanups.push(() => proxy.close());
    const up = await startFakeUpstream();
    cleanups.push(() => up.close());
    const img = seedImage(up, 'team/app', 'v1', [Buffer.from('layer through the proxy')]);

    const proxied = createUpstreamClient(ruleFor(up.url), { proxy: { httpProxy: proxy.url } });
    expect((await proxied.headManifest('team/app', 'v1')).digest).toBe(img.digest);
    expect(proxy.connects).toEqual([up.host]);
    expect(up.count()).toBe(1);

    const direct = createUpstreamClient(ruleFor(up.url), { proxy: { httpProxy: proxy.url, noProxy: 'example.com, 127.0.0.1' } });
    expect((await direct.headManifest('team/app', 'v1')).digest).toBe(img.digest);
    expect(proxy.connects).toEqual([up.host]);
    expect(up.count()).toBe(2);
  });

  it('through the proxy, internal literals and localhost are still refused (the proxy resolves names)', async () => {
    const proxy = await startConnectProxy();
    cleanups.push(() => proxy.close());
    const upstreams: string[] = [];
    for (const target of ['https://127.0.0.1:9/', 'https://169.254.169.254/', 'https://localhost:9/']) {
      const up = await redirectingUpstream(() => target);
      upstreams.push(new URL(up.url).host);
      const err = await failureOf(createUpstreamClient(ruleFor(up.url), { proxy: { httpProxy: proxy.url, httpsProxy: proxy.url } }).getBlob('team/app', DIGEST));
      expect(err.message).toMatch(/is an internal address/);
    }
    // Only the upstreams themselves went through the tunnel, never a refused target.
    expect(proxy.connects).toEqual(upstreams);
  });

  it('the environment variables reach every rule’s client (lower-case wins, as in curl); a bad proxy URL stops the start', async () => {
    const env = readEnvironment({ HTTPS_PROXY: 'http://upper:3128', https_proxy: 'http://lower:3128', NO_PROXY: 'internal' });
    expect(env.proxy).toEqual({ httpProxy: undefined, httpsProxy: 'http://lower:3128', noProxy: 'internal' });
    expect(() => readEnvironment({ HTTP_PROXY: 'http://bad host:1' })).toThrow(/HTTP_PROXY must be a proxy URL/);

    const proxy = await startConnectProxy();
    cleanups.push(() => proxy.close());
    const up = await startFakeUpstream();
    cleanups.push(() => up.close());
    const img = seedImage(up, 'app', 'v1', [Buffer.from('x')]);
    const runtime = await buildRuntime(
      readEnvironment({ PULLTHROUGH_DATA_DIR: scratchDir('proxy-'), PULLTHROUGH_LOG_LEVEL: 'SILENT', HTTP_PROXY: proxy.url }),
      parseConfig({ rules: [{ prefix: 'p', upstream: up.url }] }),
    );
    cleanups.push(() => runtime.close());
    const res = await runtime.app({ method: 'GET', path: '/v2/p/app/manifests/v1', query: new URLSearchParams(), headers: {} });
    expect(res.headers['Docker-Content-Digest']).toBe(img.digest);
    expect(proxy.connects).toEqual([up.host]);
  });
});
