/**
 * Client authentication as the registry app sees it: the guard in front of `/v2/…` and the `/token` endpoint,
 * built together from the `auth` config, an {@link Authenticator} (token mode: users.ts; iam mode: iam.ts),
 * the token key provider and the registry's own name resolution. Mode `none` builds nothing: the app then
 * serves everyone and `/token` does not exist.
 */
import type { AuthConfig } from '../config.js';
import type { RegistryRequest, RegistryResponse } from '../http/types.js';
import type { Log } from '../observe/log.js';
import { createGuard, type GuardedResource } from './guard.js';
import type { TokenKeyProvider } from './keys.js';
import { createLoginLimiter } from './login-limiter.js';
import type { NameResolution } from './scopes.js';
import { createTokenEndpoint } from './token-endpoint.js';
import type { VerifiedToken } from './tokens.js';
import type { Authenticator } from './types.js';

export type { GuardedResource } from './guard.js';

/** The two entry points the app calls. */
export interface ClientAuth {
  /** Resolves with the verified token, or throws `UNAUTHORIZED` (with the challenge) / `DENIED`. */
  guard(req: RegistryRequest, resource: GuardedResource): Promise<VerifiedToken>;
  /** Answers `/token`; throws RegistryErrors for the app to write. */
  token(req: RegistryRequest): Promise<RegistryResponse>;
}

/** What client auth is built from. `now` returns milliseconds since the epoch. */
export interface ClientAuthDeps {
  auth: AuthConfig;
  authenticator: Authenticator;
  keys: TokenKeyProvider;
  names: NameResolution;
  log: Log;
  now(): number;
}

/** Builds the guard and the token endpoint (for modes `token` and `iam`). */
export function createClientAuth(deps: ClientAuthDeps): ClientAuth {
  const settings = { service: deps.auth.service, realm: deps.auth.realm, tokenTtlSeconds: deps.auth.tokenTtlSeconds };
  return {
    guard: createGuard({ settings, keys: deps.keys, log: deps.log, now: deps.now }),
    token: createTokenEndpoint({
      settings,
      authenticator: deps.authenticator,
      keys: deps.keys,
      limiter: createLoginLimiter(deps.auth.failedLogins),
      names: deps.names,
      log: deps.log,
      now: deps.now,
    }),
  };
}
