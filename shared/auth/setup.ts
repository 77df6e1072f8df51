/**
 * Builds client auth from the config and the environment (called by the composition root, and by tests with
 * their own data dir): refuses `auth.mode: none` when `PULLTHROUGH_REQUIRE_AUTH=true`, picks the
 * authenticator (token: configured users; iam: STS), and the key provider (SSM / Secrets Manager when
 * `PULLTHROUGH_TOKEN_KEY` is set, else `<data dir>/token-key.json`). Mode `none` → undefined (no guard).
 */
import { mkdirSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import ipaddr from 'ipaddr.js';
import type { Environment, RegistryConfig } from '../config.js';
import type { Log } from '../observe/log.js';
import { createClientAuth, type ClientAuth } from './client-auth.js';
import { createFileKeyProvider, type TokenKeyProvider } from './keys.js';
import type { NameResolution } from './scopes.js';
import type { Authenticator } from './types.js';
import { createUserAuthenticator } from './users.js';

/** Name of the local key file in the data dir. */
export const TOKEN_KEY_FILE = 'token-key.json';

/** The settings of the environment client auth needs. */
export type AuthEnvironment = Pick<Environment, 'dataDir' | 'requireAuth' | 'tokenKey' | 'inLambda'> & { stsEndpoint?: string };

/**
 * Checks the auth settings against the environment; throws with a message an operator can act on.
 * Called before anything else is built, so a misconfigured deploy fails at start, not on the first pull.
 */
export function assertAuthAllowed(env: AuthEnvironment, config: RegistryConfig): void {
  const mode = config.auth.mode;
  if (mode === 'none' && env.requireAuth) {
    throw new Error(
      'client auth is required here (PULLTHROUGH_REQUIRE_AUTH=true) but the config has auth.mode: none. ' +
        'Set auth.mode to token (with auth.users) or iam (with auth.iam.principals), or deploy with anonymous clients allowed explicitly.',
    );
  }
  if (mode !== 'none' && env.inLambda && !env.tokenKey) {
    throw new Error(
      `auth.mode ${mode} on Lambda needs PULLTHROUGH_TOKEN_KEY (ssm:<parameter> or secretsmanager:<secret id>): ` +
        'a key file in one container cannot verify tokens signed in another.',
    );
  }
}

/**
 * The warning for a server listening on `host` beyond this machine with no client auth (`auth.mode: none`):
 * anyone who reaches the address pulls through the cache and spends its upstream quota. Undefined when `host`
 * is a loopback address or `localhost`, or client auth is on.
 */
export function exposureWarning(host: string, config: RegistryConfig): string | undefined {
  if (config.auth.mode !== 'none') return undefined;
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  const loopback = isIP(bare) ? ipaddr.process(bare).range() === 'loopback' : bare.toLowerCase() === 'localhost';
  if (loopback) return undefined;
  return (
    `listening on ${host} with auth.mode: none: anyone who can reach this address can pull through the cache ` +
    '(and spend its upstream quota). Set auth.mode to token or iam (README "Client authentication"), or listen on 127.0.0.1.'
  );
}

async function keyProvider(env: AuthEnvironment): Promise<TokenKeyProvider> {
  if (env.tokenKey) {
    const { createAwsKeyProvider } = await import('./aws-key-source.js');
    return createAwsKeyProvider(env.tokenKey);
  }
  const dir = resolve(env.dataDir);
  mkdirSync(dir, { recursive: true });
  return createFileKeyProvider(join(dir, TOKEN_KEY_FILE));
}

async function authenticator(env: AuthEnvironment, config: RegistryConfig): Promise<Authenticator> {
  if (config.auth.mode === 'iam') {
    const { createIamAuthenticator } = await import('./iam.js');
    return createIamAuthenticator({ principals: config.auth.iam.principals, region: config.auth.iam.region, stsEndpoint: env.stsEndpoint });
  }
  return createUserAuthenticator(config.auth.users);
}

/** Builds client auth for modes token and iam (undefined for none), after {@link assertAuthAllowed}. */
export async function buildClientAuth(opts: {
  env: AuthEnvironment;
  config: RegistryConfig;
  names: NameResolution;
  log: Log;
  now(): number;
  /** Overrides the key provider (tests). */
  keys?: TokenKeyProvider;
}): Promise<ClientAuth | undefined> {
  const { env, config, log } = opts;
  assertAuthAllowed(env, config);
  if (config.auth.mode === 'none') return undefined;
  if (config.auth.mode === 'token' && config.auth.users.length === 0) log.warn('auth.mode is token but auth.users is empty: every login fails');
  return createClientAuth({
    auth: config.auth,
    authenticator: await authenticator(env, config),
    keys: opts.keys ?? (await keyProvider(env)),
    names: opts.names,
    log,
    now: opts.now,
  });
}
