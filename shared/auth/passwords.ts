/**
 * Password hashes for the users of token mode: scrypt (RFC 7914) from node:crypto, stored as
 * `scrypt$<N>$<r>$<p>$<salt base64>$<hash base64>`. The default cost is N = 2^15, r = 8, p = 1 (OWASP's
 * minimum for scrypt; about 50–100 ms per check on one core). Passwords and hashes are never logged here;
 * callers must not log them either.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/** Cost parameters of one hash. `N` must be a power of two. */
export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** The default cost (N = 2^15, r = 8, p = 1). */
export const DEFAULT_SCRYPT_PARAMS: ScryptParams = { N: 2 ** 15, r: 8, p: 1 };

const SALT_BYTES = 16;
const HASH_BYTES = 32;
/** Bounds a stored hash may ask for, so a bad config line cannot make one check take seconds or gigabytes. */
const MAX_N = 2 ** 20;
const MAX_R = 32;
const MAX_P = 16;

function derive(password: string, salt: Buffer, params: ScryptParams, keylen: number): Promise<Buffer> {
  // scrypt needs 128·N·r bytes (plus p·128·r); node's default maxmem (32 MiB) is exactly N=2^15, r=8: too tight.
  const options: ScryptOptions = { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r + 128 * params.r * params.p };
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, keylen, options, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function validParams(p: ScryptParams): boolean {
  return (
    Number.isInteger(p.N) && p.N >= 2 && p.N <= MAX_N && (p.N & (p.N - 1)) === 0 &&
    Number.isInteger(p.r) && p.r >= 1 && p.r <= MAX_R &&
    Number.isInteger(p.p) && p.p >= 1 && p.p <= MAX_P
  );
}

/**
 * Hashes a password with a fresh 16-byte salt. `params` lowers the cost for tests only.
 * @returns `scrypt$N$r$p$<salt b64>$<hash b64>`
 */
export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT_PARAMS): Promise<string> {
  if (!validParams(params)) throw new Error('invalid scrypt parameters');
  const salt = randomBytes(SALT_BYTES);
  const hash = await derive(password, salt, params, HASH_BYTES);
  return ['scrypt', params.N, params.r, params.p, salt.toString('base64'), hash.toString('base64')].join('$');
}

/** A parsed stored hash, or undefined when `stored` is not a well-formed scrypt hash within the bounds. */
export function parsePasswordHash(stored: string): (ScryptParams & { salt: Buffer; hash: Buffer }) | undefined {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return undefined;
  const [N, r, p] = parts.slice(1, 4).map((s) => (/^\d{1,8}$/.test(s) ? Number(s) : NaN));
  const b64 = /^[A-Za-z0-9+/]+={0,2}$/;
  if (!b64.test(parts[4]) || !b64.test(parts[5])) return undefined;
  const salt = Buffer.from(parts[4], 'base64');
  const hash = Buffer.from(parts[5], 'base64');
  if (!validParams({ N, r, p }) || salt.length < 8 || hash.length < 16 || hash.length > 64) return undefined;
  return { N, r, p, salt, hash };
}

/**
 * Checks a password against a stored hash in constant time (for the hash's length). A malformed stored hash
 * never matches.
 */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parsed = parsePasswordHash(stored);
  if (!parsed) return false;
  const candidate = await derive(password, parsed.salt, parsed, parsed.hash.length);
  return timingSafeEqual(candidate, parsed.hash);
}
