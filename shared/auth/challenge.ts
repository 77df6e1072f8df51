/**
 * The service and realm of this cache as a client sees them, and the challenges it answers 401 with (Docker
 * "Token Authentication Specification", RFC 6750 §3). Defaults, when the config names neither:
 * - service (the token audience): the request's `Host`;
 * - realm: `<scheme>://<Host>/token`, the scheme from `X-Forwarded-Proto` (API Gateway and most proxies set
 *   it) and `http` without one (the local server speaks plain HTTP).
 * A `Host` that is not a plain host[:port] is replaced by `localhost`, so nothing a client sends can put
 * quotes or line breaks into a header.
 */
import type { RegistryRequest } from '../http/types.js';

/** The configured service and realm (either may be unset: then derived from the request). */
export interface ChallengeSettings {
  service?: string;
  realm?: string;
}

const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$/;

function requestHost(req: RegistryRequest): string {
  const host = req.headers.host;
  return host !== undefined && HOST.test(host) ? host : 'localhost';
}

/** The token audience for this request. */
export function serviceFor(req: RegistryRequest, settings: ChallengeSettings): string {
  return settings.service ?? requestHost(req);
}

/** The token endpoint URL for this request. */
export function realmFor(req: RegistryRequest, settings: ChallengeSettings): string {
  if (settings.realm) return settings.realm;
  const proto = (req.headers['x-forwarded-proto'] ?? '').split(',')[0].trim().toLowerCase();
  return `${proto === 'https' ? 'https' : 'http'}://${requestHost(req)}/token`;
}

/** Quotes a value for an auth-param (RFC 9110 §11.2 quoted-string): backslash-escapes `"` and `\`. */
function quoted(value: string): string {
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** `Bearer realm="…",service="…"[,scope="…"]`: the challenge of every 401 on `/v2/…`. */
export function bearerChallenge(req: RegistryRequest, settings: ChallengeSettings, scope?: string): string {
  const parts = [`realm=${quoted(realmFor(req, settings))}`, `service=${quoted(serviceFor(req, settings))}`];
  if (scope !== undefined) parts.push(`scope=${quoted(scope)}`);
  return `Bearer ${parts.join(',')}`;
}

/** `Basic realm="…"`: the challenge of a 401 from the token endpoint itself. */
export function basicChallenge(req: RegistryRequest, settings: ChallengeSettings): string {
  return `Basic realm=${quoted(serviceFor(req, settings))},charset="UTF-8"`;
}
