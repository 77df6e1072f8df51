/**
 * Registry bearer tokens (Docker "Token Authentication Implementation"): ES256 JWTs signed with `jose`.
 * Header `{alg: ES256, typ: JWT, kid}`; claims `iss`, `sub`, `aud` (= the service, a string), `exp`, `nbf`,
 * `iat`, `jti` and `access: [{type, name, actions}]`. Verification accepts a token signed by any key of the
 * current key set (the signing key and the previous ones: key rotation), binds the audience to the service
 * and allows 30 s of clock skew. Why a token failed is returned to the caller for logging only, never to the
 * client.
 */
import { randomUUID } from 'node:crypto';
import { errors as joseErrors, jwtVerify, SignJWT, type JWTPayload } from 'jose';
import type { ResourceActions } from './scopes.js';
import type { TokenKeys } from './keys.js';

/** The `iss` of every token this cache issues. */
export const TOKEN_ISSUER = 'pullthrough';
/** Clock skew tolerated on `exp`/`nbf`/`iat`, seconds. */
export const CLOCK_TOLERANCE_SECONDS = 30;

/** What a token says once verified. */
export interface VerifiedToken {
  subject: string;
  access: ResourceActions[];
  /** Seconds since the epoch. */
  expiresAt: number;
  jti: string;
}

/** A signed token and its timing, as the token endpoint answers it. */
export interface IssuedToken {
  token: string;
  /** Seconds. */
  expiresIn: number;
  /** Milliseconds since the epoch. */
  issuedAt: number;
}

/** Signs a token for `subject` with the current signing key. `now` is milliseconds since the epoch. */
export async function signToken(opts: {
  keys: TokenKeys;
  service: string;
  subject: string;
  access: ResourceActions[];
  ttlSeconds: number;
  now: number;
}): Promise<IssuedToken> {
  const iat = Math.floor(opts.now / 1000);
  const token = await new SignJWT({ access: opts.access })
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: opts.keys.signing.kid })
    .setIssuer(TOKEN_ISSUER)
    .setSubject(opts.subject)
    .setAudience(opts.service)
    .setIssuedAt(iat)
    .setNotBefore(iat)
    .setExpirationTime(iat + opts.ttlSeconds)
    .setJti(randomUUID())
    .sign(opts.keys.signing.privateKey);
  return { token, expiresIn: opts.ttlSeconds, issuedAt: iat * 1000 };
}

/** Why verification failed (for a debug log line; the client only ever sees "authentication required"). */
export type TokenRejection = 'malformed' | 'unknown-key' | 'signature' | 'expired' | 'not-yet-valid' | 'audience' | 'issuer' | 'claims';

function isAccessList(v: unknown): v is ResourceActions[] {
  return (
    Array.isArray(v) &&
    v.length <= 256 &&
    v.every(
      (a) =>
        typeof a === 'object' && a !== null &&
        typeof (a as ResourceActions).type === 'string' &&
        typeof (a as ResourceActions).name === 'string' &&
        Array.isArray((a as ResourceActions).actions) &&
        (a as ResourceActions).actions.every((x) => typeof x === 'string'),
    )
  );
}

function rejection(err: unknown): TokenRejection {
  if (err instanceof joseErrors.JWTExpired) return 'expired';
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    if (err.claim === 'aud') return 'audience';
    if (err.claim === 'iss') return 'issuer';
    if (err.claim === 'nbf' || err.claim === 'iat') return 'not-yet-valid';
    return 'claims';
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature';
  if (err instanceof joseErrors.JWKSNoMatchingKey) return 'unknown-key';
  return 'malformed';
}

/**
 * Verifies a token: ES256 only, `kid` naming a key of the set (`lookup` may refresh the set for an unknown
 * `kid`), signature, `aud` = `service`, `iss`, `exp`/`nbf` within {@link CLOCK_TOLERANCE_SECONDS}, and the
 * claims this cache needs (`sub`, `jti`, `exp`, a well-formed `access`).
 */
export async function verifyToken(
  token: string,
  opts: { lookup: (kid: string) => Promise<CryptoKey | undefined>; service: string; now: number },
): Promise<{ ok: true; token: VerifiedToken } | { ok: false; reason: TokenRejection }> {
  if (token.length > 16 * 1024) return { ok: false, reason: 'malformed' };
  try {
    const { payload } = await jwtVerify<JWTPayload & { access?: unknown }>(
      token,
      async (header) => {
        const key = typeof header.kid === 'string' ? await opts.lookup(header.kid) : undefined;
        if (!key) throw new joseErrors.JWKSNoMatchingKey();
        return key;
      },
      {
        algorithms: ['ES256'],
        typ: 'JWT',
        audience: opts.service,
        issuer: TOKEN_ISSUER,
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        currentDate: new Date(opts.now),
        requiredClaims: ['sub', 'exp', 'jti', 'iat'],
      },
    );
    if (!isAccessList(payload.access)) return { ok: false, reason: 'claims' };
    return { ok: true, token: { subject: payload.sub!, access: payload.access, expiresAt: payload.exp!, jti: payload.jti! } };
  } catch (err) {
    return { ok: false, reason: rejection(err) };
  }
}
