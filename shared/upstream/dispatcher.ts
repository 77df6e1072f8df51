/**
 * The undici dispatcher of one rule's upstream client. Every upstream connection — registry API requests, token
 * realms, blob redirect targets — is opened here, so the address rules of address-policy.ts hold after DNS
 * resolution, on the address actually connected to:
 *
 * - a trusted host (the rule names it) connects as usual;
 * - an IP literal connects only when it is public;
 * - a name is resolved by this dispatcher's own `lookup`, which refuses the name when any of its addresses is
 *   not public, and hands the checked addresses to the socket. The socket connects to exactly those: no second
 *   resolution, so a DNS answer that changes between check and connect (DNS rebinding) cannot slip through.
 *
 * **Outbound proxy** (`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, read by config-environment.ts): with a proxy set,
 * requests go through undici's `EnvHttpProxyAgent` (a `CONNECT` tunnel; `NO_PROXY` hosts connect directly, with
 * the checks above). Through the proxy it is the proxy that resolves the upstream's name, so the cache can check
 * only what it sees: the literal host (an internal IP literal or `localhost` is refused before the request,
 * address-policy.ts `assertLiteralAllowed`); names are the proxy's to resolve, and an egress proxy should itself
 * refuse internal destinations. The proxy's own address is not checked (it is configured by the operator).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { Agent, buildConnector, EnvHttpProxyAgent, type Dispatcher } from 'undici';
import { isPublicAddress, refusedAddress, type HostPolicy } from './address-policy.js';

/** Outbound proxy settings (the usual environment variables, as read by config-environment.ts). */
export interface ProxySettings {
  /** Proxy URL for `http:` upstream URLs (`HTTP_PROXY`). */
  httpProxy?: string;
  /** Proxy URL for `https:` upstream URLs (`HTTPS_PROXY`); unset → `httpProxy` (undici's rule). */
  httpsProxy?: string;
  /** `NO_PROXY`: comma-separated hosts (`host`, `.domain`, `host:port`, `*`) reached directly. */
  noProxy?: string;
}

/** Resolves a name to all its addresses (dns.lookup with `all: true`); injectable for tests. */
export type Resolver = (hostname: string, callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;

const systemResolver: Resolver = (hostname, callback) => dnsLookup(hostname, { all: true }, callback);

/**
 * A `net.connect` lookup that resolves with `resolve` and hands the socket exactly the addresses found; with
 * `check`, a name with any non-public address is refused instead (the socket never connects).
 */
export function checkedLookup(resolve: Resolver, check = true): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, (err, found) => {
      if (err) return callback(err, '', 0);
      const refused = check ? found.find((a) => !isPublicAddress(a.address)) : undefined;
      if (refused) return callback(refusedAddress(hostname, refused.address), '', 0);
      const addresses = options.family === 4 || options.family === 6 ? found.filter((a) => a.family === options.family) : found;
      if (addresses.length === 0) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
      if (options.all) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, addresses);
      else callback(null, addresses[0].address, addresses[0].family);
    });
  };
}

/**
 * Builds the dispatcher for one rule: `policy` says which hosts are trusted; `proxy` turns on the outbound
 * proxy; `resolve` replaces the system resolver (tests of DNS answers no local resolver gives).
 */
export function createUpstreamDispatcher(opts: { policy: HostPolicy; proxy?: ProxySettings; resolve?: Resolver }): Dispatcher {
  const resolve = opts.resolve ?? systemResolver;
  const direct = buildConnector({ lookup: checkedLookup(resolve, false) });
  const checked = buildConnector({ lookup: checkedLookup(resolve) });
  const connect: buildConnector.connector = (options, callback) => {
    if (opts.policy.trusted(options.host ?? options.hostname)) return direct(options, callback);
    if (isIP(options.hostname)) {
      if (!isPublicAddress(options.hostname)) return callback(refusedAddress(options.host ?? options.hostname, options.hostname), null);
      return direct(options, callback);
    }
    return checked(options, callback);
  };
  const proxy = opts.proxy;
  if (proxy?.httpProxy || proxy?.httpsProxy) {
    // Empty strings, not undefined: undici would otherwise read process.env itself (config reads it, once).
    return new EnvHttpProxyAgent({ connect, httpProxy: proxy.httpProxy ?? '', httpsProxy: proxy.httpsProxy ?? '', noProxy: proxy.noProxy ?? '' });
  }
  return new Agent({ connect });
}
