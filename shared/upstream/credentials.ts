/**
 * Upstream credentials of a pull-through cache rule, as a lazy {@link CredentialsProvider}:
 * - static `username` + `accessToken` (or `accessTokenEnv`, resolved by config.ts) from the config file;
 * - `credentialsSecret`: a Secrets Manager secret holding `{"username": "...", "accessToken": "..."}` (the keys
 *   an ECR pull-through cache secret uses). It is read on first use, i.e. the first time the rule's upstream
 *   challenges (an anonymous upstream never causes a read), and kept for {@link SECRET_TTL_MS} per container
 *   (one read per Lambda container per 10 minutes, whatever the number of pulls); concurrent first uses share
 *   one read. A rotated secret is picked up within the TTL. When a re-read fails, the last good value is used
 *   and the read is retried after {@link RETRY_AFTER_MS}.
 *
 * Each provider belongs to one rule and is given only to that rule's upstream client, which sends the
 * credentials only to the rule's upstream origin and its token realm (shared/upstream/auth.ts). Neither the
 * credentials nor the secret's contents are ever logged or put into an error message.
 *
 * No AWS SDK import here: the composition root passes a {@link SecretReader} (shared/runtime.ts).
 */
import type { PullThroughCacheRule } from '../config.js';
import type { Credentials, CredentialsProvider } from './auth.js';
import { UpstreamError } from './errors.js';

export type { Credentials, CredentialsProvider } from './auth.js';

/** Reads a secret's string value by name or ARN (Secrets Manager `GetSecretValue`); `undefined` when it has none. */
export type SecretReader = (secretId: string) => Promise<string | undefined>;

/** Milliseconds a secret read is reused (10 minutes). */
export const SECRET_TTL_MS = 10 * 60 * 1000;
/** Milliseconds before a failed re-read is tried again while the last good value is served. */
const RETRY_AFTER_MS = 30 * 1000;

/** Credentials that never change (or none: anonymous). */
export function staticCredentials(credentials: Credentials | undefined): CredentialsProvider {
  return async () => credentials;
}

/**
 * Credentials read from a secret with `readSecret`, cached for `ttlMs` (default {@link SECRET_TTL_MS}).
 * @throws UpstreamError `unavailable` when no value was ever read (the pull answers 503, never 500).
 */
export function secretCredentials(opts: {
  secretId: string;
  readSecret: SecretReader;
  ttlMs?: number;
  now?: () => number;
}): CredentialsProvider {
  const ttlMs = opts.ttlMs ?? SECRET_TTL_MS;
  const now = opts.now ?? Date.now;
  let cached: { value: Credentials; refreshAt: number } | undefined;
  let inflight: Promise<Credentials> | undefined;

  async function read(): Promise<Credentials> {
    let text: string | undefined;
    try {
      text = await opts.readSecret(opts.secretId);
    } catch (err) {
      // The SDK's message names the secret and the reason (not found, access denied), never its value.
      throw new UpstreamError('unavailable', `upstream credentials secret ${opts.secretId} could not be read: ${(err as Error).name}`);
    }
    return parseSecret(opts.secretId, text);
  }

  return async () => {
    if (cached && cached.refreshAt > now()) return cached.value;
    inflight ??= read()
      .then((value) => {
        cached = { value, refreshAt: now() + ttlMs };
        return value;
      })
      .finally(() => {
        inflight = undefined;
      });
    try {
      return await inflight;
    } catch (err) {
      if (!cached) throw err;
      // Secrets Manager is down or the secret went away: keep pulling with what worked, ask again soon.
      cached.refreshAt = now() + RETRY_AFTER_MS;
      return cached.value;
    }
  };
}

/** Parses `{"username","accessToken"}` (an ECR pull-through cache secret). Errors never quote the value. */
export function parseSecret(secretId: string, text: string | undefined): Credentials {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text ?? '');
  } catch {
    parsed = undefined;
  }
  const p = parsed as { username?: unknown; accessToken?: unknown } | undefined;
  if (!p || typeof p.username !== 'string' || !p.username || typeof p.accessToken !== 'string' || !p.accessToken) {
    throw new UpstreamError('unavailable', `upstream credentials secret ${secretId} is not JSON with string "username" and "accessToken"`);
  }
  return { username: p.username, password: p.accessToken };
}

/** The provider for a rule: its secret, its static credentials, or anonymous. */
export function credentialsForRule(rule: PullThroughCacheRule, readSecret: SecretReader): CredentialsProvider {
  if (rule.credentialsSecret !== undefined) return secretCredentials({ secretId: rule.credentialsSecret, readSecret });
  return staticCredentials(rule.username !== undefined ? { username: rule.username, password: rule.accessToken ?? '' } : undefined);
}
