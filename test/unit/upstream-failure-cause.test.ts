/**
 * An upstream request that gets no answer names its cause — connection refused, DNS, TLS, timeout — in its DEBUG
 * line and in the UpstreamError the operator's WARN line quotes, instead of undici's or fetch's bare "fetch failed".
 * The table covers the error shapes undici and fetch raise; the rest are real failures on loopback (a closed port,
 * a resolver that finds nothing, TLS spoken to a plain-HTTP server, a server that never answers).
 */
import { createServer, type Server } from 'node:http';
import { createServer as createTcpServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../shared/config.js';
import { createUpstreamClient } from '../../shared/upstream/client.js';
import { UpstreamError } from '../../shared/upstream/errors.js';
import { describeFailure } from '../../shared/upstream/failure-cause.js';
import { silentLog } from '../support/harness.js';
import { recordingMetrics } from '../support/recording-metrics.js';
import { pickFreePort } from '../support/upstream-registry.js';

const coded = (message: string, code: string) => Object.assign(new Error(message), { code });

describe('describeFailure', () => {
  it.each([
    ['connection refused', coded('connect ECONNREFUSED 127.0.0.1:9', 'ECONNREFUSED'), false, 'connection refused', 'ECONNREFUSED'],
    ['DNS behind fetch failed', new TypeError('fetch failed', { cause: coded('getaddrinfo ENOTFOUND nowhere.invalid', 'ENOTFOUND') }), false, 'DNS', 'ENOTFOUND'],
    ['DNS temporary', coded('getaddrinfo EAI_AGAIN x', 'EAI_AGAIN'), false, 'DNS', 'EAI_AGAIN'],
    ['TLS version', coded('wrong version number', 'ERR_SSL_WRONG_VERSION_NUMBER'), false, 'TLS', 'ERR_SSL_WRONG_VERSION_NUMBER'],
    ['TLS certificate', new TypeError('fetch failed', { cause: coded('unable to verify the first certificate', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE') }), false, 'TLS', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ['connect timeout', coded('Connect Timeout Error', 'UND_ERR_CONNECT_TIMEOUT'), false, 'timeout', 'UND_ERR_CONNECT_TIMEOUT'],
    ['abort by the deadline', new DOMException('The operation was aborted due to timeout', 'TimeoutError'), false, 'timeout', undefined],
    ['reset', coded('other side closed', 'UND_ERR_SOCKET'), false, 'connection reset', 'UND_ERR_SOCKET'],
    ['anything after the deadline', new Error('This operation was aborted'), true, 'timeout', undefined],
    ['unknown', new Error('something else'), false, 'network', undefined],
  ])('%s', (_name, err, timedOut, cause, code) => {
    const d = describeFailure(err, timedOut);
    expect([d.cause, d.code]).toEqual([cause, code]);
  });
});

describe('real failures, logged with their cause', () => {
  const servers: Server[] = [];
  const sockets: Socket[] = [];
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  });

  async function failure(upstream: string, opts: Parameters<typeof createUpstreamClient>[1] = {}, timeoutSeconds = 5) {
    silentLog.lines.length = 0;
    const rec = recordingMetrics();
    const rule = parseConfig({ rules: [{ prefix: 'x', upstream, upstreamTimeoutSeconds: timeoutSeconds }] }).rules[0];
    const client = createUpstreamClient(rule, { ...opts, observer: { metrics: rec.metrics, log: silentLog } });
    const err = await client.headManifest('team/app', 'v1').then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamError);
    const line = silentLog.lines.find((l) => l.message === 'upstream request failed');
    expect(line?.level).toBe('debug');
    expect(rec.upstream({ status: 'error', method: 'HEAD', kind: 'manifest' }).length).toBe(1);
    return { message: (err as Error).message, line: line?.extra[0] as Record<string, unknown> };
  }

  it('a closed port: connection refused', async () => {
    const port = await pickFreePort();
    const { message, line } = await failure(`http://127.0.0.1:${port}`);
    expect(line).toMatchObject({ cause: 'connection refused', code: 'ECONNREFUSED', host: `127.0.0.1:${port}`, path: '/v2/team/app/manifests/v1' });
    expect(message).toContain('connection refused (ECONNREFUSED)');
  });

  it('a name that does not resolve: DNS', async () => {
    const resolve = (_host: string, cb: (err: NodeJS.ErrnoException | null, a: []) => void) => cb(Object.assign(new Error('getaddrinfo ENOTFOUND registry.example'), { code: 'ENOTFOUND' }), []);
    const { message, line } = await failure('https://registry.example', { resolve });
    expect(line).toMatchObject({ cause: 'DNS', code: 'ENOTFOUND' });
    expect(message).toContain('DNS (ENOTFOUND)');
  });

  it('TLS spoken to a plain-HTTP server: TLS', async () => {
    const server = createServer((_req, res) => res.end('plain'));
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { message, line } = await failure(`https://127.0.0.1:${(server.address() as AddressInfo).port}`);
    expect(line.cause).toBe('TLS');
    expect(message).toContain(': TLS (');
  });

  it('a server that accepts and never answers: timeout', async () => {
    const server = createTcpServer((s) => sockets.push(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push(server as unknown as Server);
    const { message, line } = await failure(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, {}, 0.2);
    expect(line.cause).toBe('timeout');
    expect(message).toContain(': timeout');
  });
});
