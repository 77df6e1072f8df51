/**
 * Which hosts and addresses a rule's upstream client may reach (DESIGN.md "Security"): an upstream redirect, or a
 * token realm named by a host reached through one, must not turn the cache into a proxy to the machine's own
 * network (loopback services, the cloud metadata endpoint at 169.254.169.254, an office LAN).
 *
 * - A **trusted** host (`host[:port]` exactly as in a URL) is reached whatever it resolves to: the rule's own
 *   upstream and the hosts the rule lists in `insecureRedirectHosts` and `internalHosts`. Nothing an upstream
 *   answers adds to them: not a redirect, not the token realm its challenge names (a hostile upstream could name
 *   `https://127.0.0.1:<port>/token`); an internal realm must be listed in `internalHosts`.
 * - Any other host may be reached only at a **public** address: global unicast, classified by ipaddr.js. Refused:
 *   loopback, private (RFC 1918), carrier-grade NAT (RFC 6598, also Alibaba's metadata 100.100.100.200),
 *   link-local (169.254/16 with the AWS/GCP/Azure metadata endpoint, fe80::/10), unique-local IPv6 (fc00::/7 with
 *   AWS's fd00:ec2::254), unspecified, multicast, broadcast and reserved ranges (192.0.0.0/24 with Oracle's
 *   metadata endpoint, benchmarking, documentation). IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4
 *   address it maps; NAT64 (64:ff9b::/96) and 6to4 (2002::/16) by the IPv4 address they embed.
 *
 * The DNS part of the check is in dispatcher.ts (the address checked is the address connected to). This file
 * only classifies, and checks what can be known without DNS (an IP literal, a `localhost` name).
 */
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { PullThroughCacheRule } from '../config.js';
import { UpstreamError } from './errors.js';

/** Whether `address` (an IPv4 or IPv6 literal, no brackets) is a public unicast address. False for non-IPs. */
export function isPublicAddress(address: string): boolean {
  if (!isIP(address)) return false;
  const ip = ipaddr.process(address); // IPv4-mapped IPv6 becomes the IPv4 address
  const range = ip.range();
  if (range === 'unicast') return true;
  if (ip.kind() === 'ipv6' && (range === 'rfc6052' || range === '6to4')) {
    const bytes = ip.toByteArray();
    const embedded = range === 'rfc6052' ? bytes.slice(12, 16) : bytes.slice(2, 6);
    return ipaddr.fromByteArray(embedded).range() === 'unicast';
  }
  return false;
}

/** The range name of a refused address, for messages (`loopback`, `private`, `linkLocal`, …). */
function rangeOf(address: string): string {
  return isIP(address) ? ipaddr.process(address).range() : 'not an IP address';
}

/** The hosts one rule's client may reach at any address; see the file comment. */
export interface HostPolicy {
  /** Whether `host` (`hostname[:port]` as in `URL.host`) is trusted. */
  trusted(host: string): boolean;
}

/** The policy of `rule`: its upstream host, `insecureRedirectHosts` and `internalHosts` are trusted. */
export function createHostPolicy(rule: Pick<PullThroughCacheRule, 'upstream' | 'insecureRedirectHosts' | 'internalHosts'>): HostPolicy {
  const hosts = new Set([new URL(rule.upstream).host, ...rule.insecureRedirectHosts, ...rule.internalHosts].map((h) => h.toLowerCase()));
  return { trusted: (host) => hosts.has(host.toLowerCase()) };
}

/** `hostname` without IPv6 brackets, lower-cased. */
function bareHostname(hostname: string): string {
  return hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
}

/**
 * What can be refused before any DNS: an untrusted `url` whose host is an IP literal that is not public, or a
 * `localhost` name (RFC 6761). This is the whole check when a proxy resolves the name (dispatcher.ts).
 * @throws UpstreamError `unavailable`
 */
export function assertLiteralAllowed(url: URL, policy: HostPolicy): void {
  if (policy.trusted(url.host)) return;
  const host = bareHostname(url.hostname);
  if (isIP(host) ? !isPublicAddress(host) : host === 'localhost' || host.endsWith('.localhost')) {
    throw refusedAddress(url.host, host);
  }
}

/** The error for a refused host or address (the pull answers 503: the cache cannot reach the content). */
export function refusedAddress(host: string, address: string): UpstreamError {
  return new UpstreamError(
    'unavailable',
    `refusing to connect to ${host}: ${address} is an internal address (${rangeOf(address)}); list the host in the rule's internalHosts to allow it`,
  );
}
