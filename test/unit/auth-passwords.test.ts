/**
 * scrypt password hashes: the stored format, verification, and what never matches.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_SCRYPT_PARAMS, hashPassword, parsePasswordHash, verifyPassword } from '../../shared/auth/passwords.js';
import { parseConfig } from '../../shared/config.js';

const FAST = { N: 2 ** 10, r: 8, p: 1 };

describe('hashPassword / verifyPassword', () => {
  it('writes scrypt$N$r$p$salt$hash with the default cost N=2^15 r=8 p=1, and verifies it', async () => {
    const hash = await hashPassword('correct horse');
    expect(hash).toMatch(/^scrypt\$32768\$8\$1\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*$/);
    expect(parsePasswordHash(hash)).toMatchObject(DEFAULT_SCRYPT_PARAMS);
    expect(await verifyPassword('correct horse', hash)).toBe(true);
    expect(await verifyPassword('correct horsE', hash)).toBe(false);
  });

  it('salts every hash (same password, different hashes, both verify)', async () => {
    const [a, b] = await Promise.all([hashPassword('pw', FAST), hashPassword('pw', FAST)]);
    expect(a).not.toBe(b);
    expect(await verifyPassword('pw', a)).toBe(true);
    expect(await verifyPassword('pw', b)).toBe(true);
  });

  it('keeps the cost in the hash, so a cheaper or dearer hash still verifies', async () => {
    const hash = await hashPassword('pw', FAST);
    expect(hash.startsWith('scrypt$1024$8$1$')).toBe(true);
    expect(await verifyPassword('pw', hash)).toBe(true);
  });

  it('treats Unicode forms alike (NFC) and keeps colons and spaces in passwords', async () => {
    const hash = await hashPassword('caf\u00e9: x y', FAST);
    expect(await verifyPassword('cafe\u0301: x y', hash)).toBe(true);
    expect(await verifyPassword('café:xy', hash)).toBe(false);
  });

  it.each([
    ['not scrypt', 'bcrypt$10$abc'],
    ['missing parts', 'scrypt$1024$8$1$c2FsdHNhbHQ='],
    ['N not a power of two', 'scrypt$1000$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA=='],
    ['N beyond the bound', `scrypt$${2 ** 21}$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA==`],
    ['r beyond the bound', 'scrypt$1024$64$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA=='],
    ['salt not base64', 'scrypt$1024$8$1$$$$$aGFzaGhhc2hoYXNoaGFzaA=='],
    ['empty', ''],
  ])('a malformed stored hash never matches: %s', async (_label, stored) => {
    expect(parsePasswordHash(stored)).toBeUndefined();
    expect(await verifyPassword('anything', stored)).toBe(false);
  });

  it('the config refuses a malformed passwordHash and a user prefix no rule has', () => {
    const rules = [{ prefix: 'local', upstream: 'http://127.0.0.1:5055' }];
    expect(() => parseConfig({ rules, auth: { mode: 'token', users: [{ username: 'a', passwordHash: 'scrypt$1$2$3', prefixes: ['local'] }] } })).toThrow(/not a valid scrypt hash/);
    const ok = 'scrypt$1024$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA==';
    expect(() => parseConfig({ rules, auth: { mode: 'token', users: [{ username: 'a', passwordHash: ok, prefixes: ['lokal'] }] } })).toThrow(/"lokal" is not a rule prefix/);
    expect(() => parseConfig({ rules, auth: { mode: 'token', users: [{ username: 'a', passwordHash: ok, prefixes: ['*'] }, { username: 'a', passwordHash: ok, prefixes: ['local'] }] } })).toThrow(/usernames must be unique/);
    expect(parseConfig({ rules, auth: { mode: 'token', users: [{ username: 'a', passwordHash: ok, prefixes: ['local', '*'] }] } }).auth.users).toHaveLength(1);
  });
});
