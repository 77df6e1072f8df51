/**
 * The guard in front of `/v2/…` when client auth is on: every request carries `Authorization: Bearer <token>`
 * from this cache's token endpoint. Missing, malformed, expired, wrongly signed or for another audience → 401
 * `UNAUTHORIZED` with the Bearer challenge (`scope="repository:<name>:pull"` on name routes, none on `/v2/`);
 * a valid token without `pull` on the name's canonical form → 403 `DENIED`. The client is never told why a
 * token was rejected (a debug log line says). The token is never forwarded anywhere: the upstream client
 * does not see request headers.
 */
import type { RegistryRequest } from '../http/types.js';
import { assertName } from '../oci/reference.js';
import { RegistryError } from '../oci/errors.js';
import type { Log } from '../observe/log.js';
import { bearerChallenge, serviceFor, type ChallengeSettings } from './challenge.js';
import type { TokenKeyProvider } from './keys.js';
import { hasAccess } from './scopes.js';
import { verifyToken, type VerifiedToken } from './tokens.js';

/**
 * What a request reaches, as the guard needs it:
 * - `any`: a valid token is enough (`/v2/`, and routes answered with an error anyway: pushes, unknown paths);
 * - `catalog`: `registry:catalog:*`;
 * - `repository`: `pull` on the canonical name. `name` is the name as the client sent it (for the challenge's
 *   scope); `canonical()` resolves it as the registry will serve it (mirror `ns`, default rule, `library/`).
 */
export type GuardedResource =
  | { kind: 'any' }
  | { kind: 'catalog' }
  | { kind: 'repository'; name: string; canonical(): string };

/** What the guard is built from. `now` returns milliseconds since the epoch. */
export interface GuardDeps {
  settings: ChallengeSettings;
  keys: TokenKeyProvider;
  log: Log;
  now(): number;
}

/** `Authorization: Bearer <token>` → the token (scheme case-insensitive). */
function bearerToken(header: string | undefined): string | undefined {
  const m = /^bearer\s+([A-Za-z0-9._~+/-]+=*)\s*$/i.exec(header ?? '');
  return m?.[1];
}

/** The challenge scope for a resource, when it has one a client can ask for. */
function challengeScope(resource: GuardedResource): string | undefined {
  if (resource.kind === 'catalog') return 'registry:catalog:*';
  if (resource.kind !== 'repository') return undefined;
  try {
    return `repository:${assertName(resource.name)}:pull`;
  } catch {
    return undefined; // not a valid name: no scope (and nothing odd in the header)
  }
}

/** Builds the guard: resolves with the verified token, or throws `UNAUTHORIZED` / `DENIED` / `UNAVAILABLE`. */
export function createGuard(deps: GuardDeps): (req: RegistryRequest, resource: GuardedResource) => Promise<VerifiedToken> {
  return async (req, resource) => {
    const challenge = () =>
      new RegistryError('UNAUTHORIZED', undefined, { headers: { 'WWW-Authenticate': bearerChallenge(req, deps.settings, challengeScope(resource)) } });
    const token = bearerToken(req.headers.authorization);
    if (!token) throw challenge();
    try {
      await deps.keys.keys();
    } catch (err) {
      deps.log.error('token verification key unavailable', { reason: (err as Error).message });
      throw new RegistryError('UNAVAILABLE', 'tokens cannot be checked right now; retry', { headers: { 'Retry-After': '5' } });
    }
    const result = await verifyToken(token, { lookup: (kid) => deps.keys.verificationKey(kid), service: serviceFor(req, deps.settings), now: deps.now() });
    if (!result.ok) {
      deps.log.debug('bearer token rejected', { reason: result.reason, path: req.path });
      throw challenge();
    }
    const { access } = result.token;
    let allowed: boolean;
    if (resource.kind === 'any') allowed = true;
    else if (resource.kind === 'catalog') allowed = hasAccess(access, 'registry', 'catalog', '*');
    else {
      let canonical: string | undefined;
      try {
        canonical = resource.canonical();
      } catch {
        canonical = undefined; // no rule serves it: no token can grant it
      }
      allowed = canonical !== undefined && hasAccess(access, 'repository', canonical, 'pull');
    }
    if (!allowed) throw new RegistryError('DENIED');
    return result.token;
  };
}
