/**
 * Token signing keys (ES256, P-256). A key source holds one JWK or a JSON array of JWKs: the first (a private
 * key, with `d`) signs, all of them verify, so a key can be rotated without invalidating the tokens already
 * out (put the new key first, keep the old one second for at least the token lifetime, then drop it).
 * A key's id (`kid`) is the JWK's own `kid`, else its RFC 7638 thumbprint.
 *
 * Sources:
 * - local: `<data dir>/token-key.json`, generated on first use (mode 0600; never overwritten);
 * - AWS: an SSM parameter or a Secrets Manager secret (`PULLTHROUGH_TOKEN_KEY`), read lazily and cached for
 *   5 minutes; a token with an unknown `kid` (signed by a newer key) refreshes the set at most every 30 s.
 *   Reading the value is the composition root's job (`aws-key-source.ts`), so this file needs no AWS SDK.
 * Key material never appears in an error message or a log line.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, type JWK } from 'jose';

/** The key set in use. */
export interface TokenKeys {
  signing: { kid: string; privateKey: CryptoKey };
  /** `kid` → public key, for every key of the set (the signing key's included). */
  verifying: Map<string, CryptoKey>;
}

/** Where the token endpoint and the guard get keys. */
export interface TokenKeyProvider {
  /** The current key set (cached; loaded on first use). */
  keys(): Promise<TokenKeys>;
  /** The public key for `kid`, or undefined. An unknown `kid` may refresh the set first (rate-limited). */
  verificationKey(kid: string): Promise<CryptoKey | undefined>;
}

/** Default lifetime of a fetched key set (AWS sources), ms. */
export const KEY_CACHE_TTL_MS = 5 * 60 * 1000;
/** Least time between two refreshes caused by unknown `kid`s, ms. */
export const UNKNOWN_KID_REFRESH_MS = 30 * 1000;

function isEcP256(k: unknown): k is JWK & { kty: 'EC'; crv: 'P-256'; x: string; y: string } {
  const j = k as JWK;
  return typeof j === 'object' && j !== null && j.kty === 'EC' && j.crv === 'P-256' && typeof j.x === 'string' && typeof j.y === 'string';
}

/**
 * Parses a key source's text (one JWK or an array; the first must be private).
 * @throws Error naming what is wrong, never quoting the key.
 */
export async function parseKeySet(text: string, source: string): Promise<TokenKeys> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`token key ${source}: not JSON (expected a JWK or an array of JWKs)`);
  }
  const list = Array.isArray(parsed) ? parsed : [parsed];
  if (list.length === 0) throw new Error(`token key ${source}: empty key list`);
  const verifying = new Map<string, CryptoKey>();
  let signing: TokenKeys['signing'] | undefined;
  for (const [i, jwk] of list.entries()) {
    if (!isEcP256(jwk)) throw new Error(`token key ${source}: key ${i} is not an EC P-256 JWK (ES256)`);
    const publicJwk = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y };
    const kid = typeof jwk.kid === 'string' && jwk.kid !== '' ? jwk.kid : await calculateJwkThumbprint(publicJwk);
    try {
      verifying.set(kid, (await importJWK(publicJwk, 'ES256')) as CryptoKey);
      if (i === 0) {
        if (typeof jwk.d !== 'string') throw new Error('no private part');
        signing = { kid, privateKey: (await importJWK({ ...publicJwk, d: jwk.d }, 'ES256')) as CryptoKey };
      }
    } catch {
      throw new Error(`token key ${source}: key ${i} cannot be imported${i === 0 ? ' as a private ES256 key (the first key signs)' : ''}`);
    }
  }
  return { signing: signing!, verifying };
}

/** Generates a private ES256 JWK with a `kid` (its thumbprint), e.g. for a new key to rotate in. */
export async function generateSigningJwk(): Promise<JWK> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint({ kty: jwk.kty!, crv: jwk.crv!, x: jwk.x!, y: jwk.y! });
  return { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d, kid, alg: 'ES256', use: 'sig' };
}

/**
 * A provider over any text source: loads on first use, keeps the set `ttlMs` (Infinity = for the process),
 * refreshes for an unknown `kid` at most every {@link UNKNOWN_KID_REFRESH_MS}. When a refresh fails, the last
 * good set stays in use (and the next attempt waits that long again); with no set yet, the error is thrown.
 */
export function createKeyProvider(load: () => Promise<string>, opts: { source: string; ttlMs?: number; now?: () => number }): TokenKeyProvider {
  const ttlMs = opts.ttlMs ?? KEY_CACHE_TTL_MS;
  const now = opts.now ?? Date.now;
  let current: TokenKeys | undefined;
  let loadedAt = -Infinity;
  let attemptedAt = -Infinity;
  let inflight: Promise<TokenKeys> | undefined;

  function refresh(): Promise<TokenKeys> {
    inflight ??= (async () => {
      attemptedAt = now();
      try {
        const keys = await parseKeySet(await load(), opts.source);
        current = keys;
        loadedAt = now();
        return keys;
      } catch (err) {
        if (current) return current;
        throw err;
      } finally {
        inflight = undefined;
      }
    })();
    return inflight;
  }

  async function keys(): Promise<TokenKeys> {
    const t = now();
    if (current && (t - loadedAt < ttlMs || t - attemptedAt < UNKNOWN_KID_REFRESH_MS)) return current;
    return refresh();
  }

  return {
    keys,
    async verificationKey(kid) {
      const set = await keys();
      const key = set.verifying.get(kid);
      if (key || ttlMs === Infinity || now() - attemptedAt < UNKNOWN_KID_REFRESH_MS) return key;
      return (await refresh()).verifying.get(kid);
    },
  };
}

/**
 * The local key file: read it, or create it with a new key (mode 0600, exclusive create, so two processes
 * starting together end up with the one key that won). Kept for the life of the process.
 */
export function createFileKeyProvider(path: string): TokenKeyProvider {
  return createKeyProvider(
    async () => {
      try {
        return await readFile(path, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      const text = `${JSON.stringify(await generateSigningJwk())}\n`;
      try {
        await writeFile(path, text, { flag: 'wx', mode: 0o600 });
        return text;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readFile(path, 'utf8');
        throw err;
      }
    },
    { source: path, ttlMs: Infinity },
  );
}
