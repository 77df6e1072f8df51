/**
 * A "vanity" registry host for tests of upstream redirects: it serves nothing itself and answers every
 * `/v2/...` request with a 307 to another registry (as registry.k8s.io does per region, and as vanity domains
 * do for a whole registry): `/v2/` → `<target>/v2/`, `/v2/<name>/<rest>` → `<target>/v2/<pathPrefix>/<name>/<rest>`,
 * query kept. Records every request (method, path, Authorization). Loopback only.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface VanityHost {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** `127.0.0.1:PORT` */
  host: string;
  requests: Array<{ method: string; path: string; authorization?: string }>;
  close(): Promise<void>;
}

/** Starts the redirector in front of `target` (a registry base URL), moving names under `pathPrefix`. */
export async function startVanityHost(target: string, pathPrefix: string): Promise<VanityHost> {
  const requests: VanityHost['requests'] = [];
  const server = createServer((req, res) => {
    const path = req.url ?? '/';
    requests.push({ method: req.method ?? 'GET', path, authorization: req.headers.authorization });
    const location = path === '/v2/' || path === '/v2' ? `${target}/v2/` : path.replace(/^\/v2\//, `${target}/v2/${pathPrefix}/`);
    res.writeHead(307, { Location: location, 'Content-Length': '0' }).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    host: new URL(url).host,
    requests,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
