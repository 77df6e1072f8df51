/**
 * A small Docker token server (Docker "Token Authentication Specification") for e2e tests of token-auth
 * upstreams: Debian's docker-registry (distribution 2.8) configured with `auth.token` trusts the certificate it
 * writes (`certPath`, for `rootcertbundle`) and accepts the ES256 JWTs it issues.
 *
 * What distribution 2.8 insists on: the JWT header's `kid` is libtrust's key id of the signing key (SHA-256 of
 * the public key's DER SubjectPublicKeyInfo, first 240 bits, base32 without padding, 12 groups of 4 characters
 * joined by `:`); `aud` is a string (2.8 cannot read an array); `iss` is the configured issuer. The key and the
 * self-signed certificate come from `openssl` (node:crypto cannot make certificates).
 *
 * `GET /token?service=&scope=repository:NAME:pull[,push]`: with Basic credentials of a known user → a token
 * granting the requested actions; wrong credentials → 401; none → an anonymous token granting nothing (as Docker
 * Hub does). Every request is recorded with its Authorization header.
 */
import { execFileSync } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, randomUUID, sign, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { scratchDir } from './scratch.js';

export interface TokenServer {
  /** `http://127.0.0.1:PORT/token`: the registry's `auth.token.realm`. */
  realm: string;
  /** The registry's `auth.token.service` (the token's `aud`). */
  service: string;
  /** The registry's `auth.token.issuer`. */
  issuer: string;
  /** PEM certificate of the signing key: the registry's `auth.token.rootcertbundle`. */
  certPath: string;
  /** libtrust key id of the signing key (the JWT `kid`). */
  keyId: string;
  requests: Array<{ scope?: string; authorization?: string; status: number; granted: string[] }>;
  close(): Promise<void>;
}

/** RFC 4648 base32 (standard alphabet), no padding. */
function base32(bytes: Buffer): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

/** libtrust's key id (docker/libtrust `keyIDFromCryptoKey`), the `kid` distribution 2.8 looks trusted keys up by. */
export function libtrustKeyId(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  const hash = createHash('sha256').update(der).digest().subarray(0, 30);
  return base32(hash).match(/.{4}/g)!.join(':');
}

const b64url = (v: Buffer | string) => Buffer.from(v).toString('base64url');

/** Starts the token server on 127.0.0.1 (free port). `users`: username → password. */
export async function startTokenServer(opts: { users: Record<string, string>; service?: string; issuer?: string; tokenSeconds?: number }): Promise<TokenServer> {
  const dir = scratchDir('token-server-');
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=pullthrough-test-token-issuer'],
    { stdio: 'ignore', timeout: 20_000 },
  );
  const privateKey = createPrivateKey(readFileSync(keyPath));
  const keyId = libtrustKeyId(createPublicKey(privateKey));
  const service = opts.service ?? 'pullthrough-test-upstream';
  const issuer = opts.issuer ?? 'pullthrough-test-token-issuer';
  const requests: TokenServer['requests'] = [];

  function issue(subject: string, access: Array<{ type: string; name: string; actions: string[] }>): string {
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'ES256', kid: keyId };
    const claims = { iss: issuer, sub: subject, aud: service, exp: now + (opts.tokenSeconds ?? 300), nbf: now - 10, iat: now, jti: randomUUID(), access };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const signature = sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
    return `${input}.${b64url(signature)}`;
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://token.invalid');
    const authorization = req.headers.authorization;
    const scope = url.searchParams.get('scope') ?? undefined;
    const answer = (status: number, body: unknown, granted: string[] = []) => {
      requests.push({ scope, authorization, status, granted });
      res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
    };
    if (url.pathname !== '/token') return answer(404, { errors: [{ code: 'NOT_FOUND' }] });
    let subject = '';
    if (authorization) {
      const m = /^Basic (.+)$/.exec(authorization);
      const [user, ...rest] = m ? Buffer.from(m[1], 'base64').toString('utf8').split(':') : [];
      if (!user || opts.users[user] === undefined || opts.users[user] !== rest.join(':')) return answer(401, { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] });
      subject = user;
    }
    const access: Array<{ type: string; name: string; actions: string[] }> = [];
    for (const s of url.searchParams.getAll('scope').flatMap((v) => v.split(' '))) {
      const m = /^repository:([^:]+):(.+)$/.exec(s);
      if (m && subject) access.push({ type: 'repository', name: m[1], actions: m[2].split(',').filter((a) => a === 'pull' || a === 'push') });
    }
    const token = issue(subject, access);
    answer(200, { token, access_token: token, expires_in: opts.tokenSeconds ?? 300, issued_at: new Date().toISOString() }, access.flatMap((a) => a.actions.map((x) => `${a.name}:${x}`)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certPath,
    keyId,
    requests,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
