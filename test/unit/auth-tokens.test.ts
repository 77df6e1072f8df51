/**
 * Registry bearer tokens (ES256 JWTs via jose) and their signing keys: claims, audience binding, clock skew,
 * key rotation (current + previous keys verify), the local key file and the cached remote key source.
 */
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt, decodeProtectedHeader, SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { createFileKeyProvider, createKeyProvider, generateSigningJwk, KEY_CACHE_TTL_MS, parseKeySet, UNKNOWN_KID_REFRESH_MS, type TokenKeys } from '../../shared/auth/keys.js';
import { CLOCK_TOLERANCE_SECONDS, signToken, TOKEN_ISSUER, verifyToken } from '../../shared/auth/tokens.js';

const SERVICE = 'cache.example.com';
const NOW = Date.UTC(2026, 0, 1, 12, 0, 0);
const access = [{ type: 'repository', name: 'local/app', actions: ['pull'] }];

async function keySet(...jwks: object[]): Promise<TokenKeys> {
  return parseKeySet(JSON.stringify(jwks), 'test');
}
const lookupIn = (keys: TokenKeys) => async (kid: string) => keys.verifying.get(kid);
const sign = (keys: TokenKeys, over: Partial<Parameters<typeof signToken>[0]> = {}) =>
  signToken({ keys, service: SERVICE, subject: 'user:alice', access, ttlSeconds: 300, now: NOW, ...over });

describe('signToken / verifyToken', () => {
  it('issues an ES256 JWT with kid, iss, sub, aud (a string), iat/nbf/exp, jti and access', async () => {
    const jwk = await generateSigningJwk();
    const keys = await keySet(jwk);
    const issued = await sign(keys);
    expect(issued).toMatchObject({ expiresIn: 300, issuedAt: NOW });
    expect(decodeProtectedHeader(issued.token)).toEqual({ alg: 'ES256', typ: 'JWT', kid: (jwk as { kid: string }).kid });
    const claims = decodeJwt(issued.token);
    expect(claims).toMatchObject({ iss: TOKEN_ISSUER, sub: 'user:alice', aud: SERVICE, iat: NOW / 1000, nbf: NOW / 1000, exp: NOW / 1000 + 300, access });
    expect(claims.jti).toMatch(/^[0-9a-f-]{36}$/);
    const v = await verifyToken(issued.token, { lookup: lookupIn(keys), service: SERVICE, now: NOW + 1000 });
    expect(v).toEqual({ ok: true, token: { subject: 'user:alice', access, expiresAt: NOW / 1000 + 300, jti: claims.jti } });
  });

  it('refuses a token for another audience (service)', async () => {
    const keys = await keySet(await generateSigningJwk());
    const { token } = await sign(keys, { service: 'other.example.com' });
    expect(await verifyToken(token, { lookup: lookupIn(keys), service: SERVICE, now: NOW })).toEqual({ ok: false, reason: 'audience' });
  });

  it(`accepts ${CLOCK_TOLERANCE_SECONDS} s of clock skew past exp, not more`, async () => {
    const keys = await keySet(await generateSigningJwk());
    const { token } = await sign(keys);
    const exp = NOW + 300_000;
    expect((await verifyToken(token, { lookup: lookupIn(keys), service: SERVICE, now: exp + 29_000 })).ok).toBe(true);
    expect(await verifyToken(token, { lookup: lookupIn(keys), service: SERVICE, now: exp + 31_000 })).toEqual({ ok: false, reason: 'expired' });
  });

  it('refuses a token not yet valid beyond the tolerance (a client clock far ahead of ours)', async () => {
    const keys = await keySet(await generateSigningJwk());
    const { token } = await sign(keys);
    expect((await verifyToken(token, { lookup: lookupIn(keys), service: SERVICE, now: NOW - 29_000 })).ok).toBe(true);
    expect(await verifyToken(token, { lookup: lookupIn(keys), service: SERVICE, now: NOW - 31_000 })).toEqual({ ok: false, reason: 'not-yet-valid' });
  });

  it('rotation: tokens of the previous key verify while it is listed second; new tokens use the new key', async () => {
    const oldJwk = await generateSigningJwk();
    const newJwk = await generateSigningJwk();
    const before = await keySet(oldJwk);
    const during = await keySet(newJwk, { ...oldJwk, d: undefined });
    const after = await keySet(newJwk);
    const oldToken = (await sign(before)).token;
    expect((await verifyToken(oldToken, { lookup: lookupIn(during), service: SERVICE, now: NOW })).ok).toBe(true);
    const newToken = (await sign(during)).token;
    expect(decodeProtectedHeader(newToken).kid).toBe((newJwk as { kid: string }).kid);
    expect((await verifyToken(newToken, { lookup: lookupIn(after), service: SERVICE, now: NOW })).ok).toBe(true);
    expect(await verifyToken(oldToken, { lookup: lookupIn(after), service: SERVICE, now: NOW })).toEqual({ ok: false, reason: 'unknown-key' });
  });

  it('refuses a token signed by another key under a known kid, a tampered payload, HS256 and garbage', async () => {
    const jwk = await generateSigningJwk();
    const keys = await keySet(jwk);
    const impostor = await keySet({ ...(await generateSigningJwk()), kid: (jwk as { kid: string }).kid });
    const forged = (await sign(impostor)).token;
    expect(await verifyToken(forged, { lookup: lookupIn(keys), service: SERVICE, now: NOW })).toEqual({ ok: false, reason: 'signature' });

    const [h, , s] = (await sign(keys)).token.split('.');
    const widened = Buffer.from(JSON.stringify({ ...decodeJwt((await sign(keys)).token), access: [{ type: 'repository', name: 'docker-hub/x', actions: ['pull'] }] })).toString('base64url');
    expect(await verifyToken(`${h}.${widened}.${s}`, { lookup: lookupIn(keys), service: SERVICE, now: NOW })).toEqual({ ok: false, reason: 'signature' });

    const hs = await new SignJWT({ access })
      .setProtectedHeader({ alg: 'HS256', kid: (jwk as { kid: string }).kid })
      .setIssuer(TOKEN_ISSUER).setAudience(SERVICE).setSubject('x').setJti('j').setIssuedAt(NOW / 1000).setExpirationTime(NOW / 1000 + 60)
      .sign(new Uint8Array(32));
    expect((await verifyToken(hs, { lookup: lookupIn(keys), service: SERVICE, now: NOW })).ok).toBe(false);
    expect(await verifyToken('not.a.jwt', { lookup: lookupIn(keys), service: SERVICE, now: NOW })).toEqual({ ok: false, reason: 'malformed' });
  });

  it('refuses a validly signed token whose access claim is malformed', async () => {
    const jwk = await generateSigningJwk();
    const keys = await keySet(jwk);
    const bad = await new SignJWT({ access: 'everything' })
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: keys.signing.kid })
      .setIssuer(TOKEN_ISSUER).setAudience(SERVICE).setSubject('x').setJti('j').setIssuedAt(NOW / 1000).setExpirationTime(NOW / 1000 + 60)
      .sign(keys.signing.privateKey);
    expect(await verifyToken(bad, { lookup: lookupIn(keys), service: SERVICE, now: NOW })).toEqual({ ok: false, reason: 'claims' });
  });
});

describe('token keys', () => {
  it('the local key file is created on first use with mode 0600 and reused by the next process', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pt-keys-'));
    const path = join(dir, 'token-key.json');
    const first = await createFileKeyProvider(path).keys();
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(path, 'utf8'))).toMatchObject({ kty: 'EC', crv: 'P-256', kid: first.signing.kid });
    const second = await createFileKeyProvider(path).keys();
    expect(second.signing.kid).toBe(first.signing.kid);
  });

  it('two providers starting together end up with one key', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'pt-keys-')), 'token-key.json');
    const [a, b] = await Promise.all([createFileKeyProvider(path).keys(), createFileKeyProvider(path).keys()]);
    expect(a.signing.kid).toBe(b.signing.kid);
  });

  it('a key without kid gets its RFC 7638 thumbprint; errors never quote key material', async () => {
    const { kid, ...noKid } = (await generateSigningJwk()) as { kid: string; d: string };
    expect((await parseKeySet(JSON.stringify(noKid), 't')).signing.kid).toBe(kid);
    const publicOnly = { ...noKid, d: undefined };
    await expect(parseKeySet(JSON.stringify(publicOnly), 'ssm:/k')).rejects.toThrow(/key 0 cannot be imported as a private ES256 key/);
    const broken = { ...noKid, x: 'AAAA' };
    const err = await parseKeySet(JSON.stringify(broken), 'ssm:/k').catch((e: Error) => e);
    expect(String(err)).not.toContain(noKid.d);
    await expect(parseKeySet('{"kty":"RSA"}', 's')).rejects.toThrow(/not an EC P-256 JWK/);
    await expect(parseKeySet('nope', 's')).rejects.toThrow(/not JSON/);
  });

  it('a remote source is read lazily, cached 5 min, kept when a refresh fails, and re-read for an unknown kid at most every 30 s', async () => {
    const a = await generateSigningJwk();
    const b = await generateSigningJwk();
    let value = JSON.stringify(a);
    let reads = 0;
    let failing = false;
    let t = NOW;
    const provider = createKeyProvider(
      async () => {
        reads++;
        if (failing) throw new Error('throttled');
        return value;
      },
      { source: 'test', now: () => t },
    );
    expect(reads).toBe(0);
    expect((await provider.keys()).signing.kid).toBe((a as { kid: string }).kid);
    await provider.keys();
    expect(reads).toBe(1);

    // Rotated remotely: [b, a]. A token signed with b arrives before the cache expires: one re-read.
    value = JSON.stringify([b, a]);
    t += UNKNOWN_KID_REFRESH_MS;
    expect(await provider.verificationKey((b as { kid: string }).kid)).toBeDefined();
    expect(reads).toBe(2);
    // Unknown kids right after do not hammer the source.
    expect(await provider.verificationKey('nope')).toBeUndefined();
    expect(reads).toBe(2);

    // After the TTL the source is read again; when that fails, the last good set stays in use.
    failing = true;
    t += KEY_CACHE_TTL_MS;
    expect((await provider.keys()).signing.kid).toBe((b as { kid: string }).kid);
    expect(reads).toBe(3);
    await provider.keys();
    expect(reads).toBe(3);
  });

  it('a remote source that fails before any read succeeded fails the call', async () => {
    const provider = createKeyProvider(async () => Promise.reject(new Error('AccessDenied')), { source: 'ssm:/x' });
    await expect(provider.keys()).rejects.toThrow('AccessDenied');
  });
});
