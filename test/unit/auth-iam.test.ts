/**
 * Auth mode `iam`: login passwords (presigned STS GetCallerIdentity URLs) made with known test credentials,
 * verified against the STS stand-in (which recomputes every signature with the SDK's signer). Tampered
 * passwords are refused before anything is fetched; a wrong signature only ever reaches the stand-in.
 */
import { execFile } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  arnMatches,
  callerArns,
  checkLoginPassword,
  createIamAuthenticator,
  IAM_USERNAME,
} from '../../shared/auth/iam.js';
import { createLoginPassword } from '../../shared/auth/login-password.js';
import { startStsStandin, TEST_ROLE, TEST_STRANGER, TEST_USER, type StsStandin } from '../support/sts-standin.js';
import { pickFreePort } from '../support/upstream-registry.js';

const REGION = 'us-east-1';
let sts: StsStandin;

beforeAll(async () => {
  sts = await startStsStandin();
});
afterAll(async () => {
  await sts.close();
});

/** A fetch that counts calls and passes them on (to the stand-in). */
function countingFetch() {
  const calls: string[] = [];
  const impl = (async (input: string | URL | Request, init?: RequestInit) => {
    calls.push(String(input));
    return fetch(input, init);
  }) as typeof fetch;
  return { calls, impl };
}

const principals = [
  { arn: 'arn:aws:iam::111122223333:user/ci/*', prefixes: ['docker-hub', 'ghcr'] },
  { arn: 'arn:aws:iam::111122223333:user/ci/builder', prefixes: ['quay'] },
  { arn: 'arn:aws:iam::444455556666:role/node-puller', prefixes: ['k8s'] },
];

const decode = (password: string) => Buffer.from(password, 'base64url').toString('utf8');
const encode = (url: string) => Buffer.from(url).toString('base64url');
const login = (who: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }, extra: { expiresInSeconds?: number; signingDate?: Date } = {}) =>
  createLoginPassword({ region: REGION, credentials: who, endpoint: sts.url, ...extra });

describe('createLoginPassword', () => {
  it('is a base64url presigned GetCallerIdentity GET for the region’s STS endpoint, expiring in 60 s', async () => {
    const url = new URL(decode(await createLoginPassword({ region: 'eu-west-1', credentials: TEST_USER })));
    expect(url.origin).toBe('https://sts.eu-west-1.amazonaws.com');
    expect(url.pathname).toBe('/');
    expect(url.searchParams.get('Action')).toBe('GetCallerIdentity');
    expect(url.searchParams.get('Version')).toBe('2011-06-15');
    expect(url.searchParams.get('X-Amz-Expires')).toBe('60');
    expect(url.searchParams.get('X-Amz-SignedHeaders')).toBe('host');
    expect(url.searchParams.get('X-Amz-Credential')).toMatch(/^AKIAPULLTHROUGHTEST1\/\d{8}\/eu-west-1\/sts\/aws4_request$/);
    expect(decode(await createLoginPassword({ region: 'cn-north-1', credentials: TEST_USER }))).toMatch(/^https:\/\/sts\.cn-north-1\.amazonaws\.com\.cn\/\?/);
  });

  it('carries a standard SigV4 query signature (recomputed here by hand with node:crypto)', async () => {
    const url = new URL(decode(await login(TEST_ROLE)));
    const params = [...url.searchParams].filter(([k]) => k !== 'X-Amz-Signature');
    const esc = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
    const canonicalQuery = params.map(([k, v]) => `${esc(k)}=${esc(v)}`).sort().join('&');
    const emptyHash = createHash('sha256').update('').digest('hex');
    const canonical = ['GET', '/', canonicalQuery, `host:${url.host}`, '', 'host', emptyHash].join('\n');
    const date = url.searchParams.get('X-Amz-Date')!;
    const scope = `${date.slice(0, 8)}/${REGION}/sts/aws4_request`;
    const toSign = ['AWS4-HMAC-SHA256', date, scope, createHash('sha256').update(canonical).digest('hex')].join('\n');
    let key: Buffer = Buffer.from(`AWS4${TEST_ROLE.secretAccessKey}`);
    for (const part of [date.slice(0, 8), REGION, 'sts', 'aws4_request']) key = createHmac('sha256', key).update(part).digest();
    expect(url.searchParams.get('X-Amz-Signature')).toBe(createHmac('sha256', key).update(toSign).digest('hex'));
    expect(url.searchParams.get('X-Amz-Security-Token')).toBe(TEST_ROLE.sessionToken);
  });

  it('refuses an expiry past 900 s', async () => {
    await expect(createLoginPassword({ region: REGION, credentials: TEST_USER, expiresInSeconds: 901 })).rejects.toThrow(/1\.\.900/);
  });
});

describe('createIamAuthenticator against the STS stand-in', () => {
  it('an IAM user’s password → identity with its ARN and the prefixes of every matching principal; reused without a second STS call', async () => {
    const f = countingFetch();
    const auth = createIamAuthenticator({ principals, region: REGION, stsEndpoint: sts.url, fetchImpl: f.impl });
    const password = await login(TEST_USER);
    const identity = await auth.authenticate(IAM_USERNAME, password);
    expect(identity).toEqual({ kind: 'iam', subject: 'arn:aws:iam::111122223333:user/ci/builder', prefixes: ['docker-hub', 'ghcr', 'quay'] });
    expect(f.calls).toHaveLength(1);
    expect(await auth.authenticate(IAM_USERNAME, password)).toEqual(identity);
    expect(f.calls).toHaveLength(1);
  });

  it('an assumed role (session token) matches a principal written as the role’s IAM ARN; the subject stays the STS ARN', async () => {
    const auth = createIamAuthenticator({ principals, region: REGION, stsEndpoint: sts.url });
    expect(await auth.authenticate(IAM_USERNAME, await login(TEST_ROLE))).toEqual({
      kind: 'iam',
      subject: 'arn:aws:sts::444455556666:assumed-role/node-puller/i-0123456789abcdef0',
      prefixes: ['k8s'],
    });
    const bySession = createIamAuthenticator({ principals: [{ arn: 'arn:aws:sts::444455556666:assumed-role/node-puller/*', prefixes: ['*'] }], region: REGION, stsEndpoint: sts.url });
    expect((await bySession.authenticate(IAM_USERNAME, await login(TEST_ROLE)))?.prefixes).toEqual(['*']);
    const otherRole = createIamAuthenticator({ principals: [{ arn: 'arn:aws:iam::444455556666:role/other', prefixes: ['*'] }], region: REGION, stsEndpoint: sts.url });
    expect(await otherRole.authenticate(IAM_USERNAME, await login(TEST_ROLE))).toBeUndefined();
  });

  it('valid credentials of an ARN no principal names → undefined (after STS said who it is)', async () => {
    const before = sts.requests.length;
    const auth = createIamAuthenticator({ principals, region: REGION, stsEndpoint: sts.url });
    expect(await auth.authenticate(IAM_USERNAME, await login(TEST_STRANGER))).toBeUndefined();
    expect(sts.requests.slice(before).map((r) => r.status)).toEqual([200]);
  });

  it('an altered signature, a wrong secret key or a swapped session token reach only the stand-in, which answers 403 → undefined', async () => {
    const f = countingFetch();
    const auth = createIamAuthenticator({ principals, region: REGION, stsEndpoint: sts.url, fetchImpl: f.impl });
    const good = decode(await login(TEST_USER));
    const sig = new URL(good).searchParams.get('X-Amz-Signature')!;
    const flipped = good.replace(sig, sig.slice(0, -1) + (sig.endsWith('0') ? '1' : '0'));
    const wrongKey = await login({ ...TEST_USER, secretAccessKey: 'not-the-key' });
    const roleUrl = decode(await login(TEST_ROLE));
    const swappedToken = roleUrl.replace(encodeURIComponent(TEST_ROLE.sessionToken!), encodeURIComponent('AQoDYXdzEJr//other+token=='));
    expect(swappedToken).not.toBe(roleUrl);
    const before = sts.requests.length;
    for (const p of [encode(flipped), wrongKey, encode(swappedToken)]) expect(await auth.authenticate(IAM_USERNAME, p)).toBeUndefined();
    expect(f.calls.every((u) => u.startsWith(`${sts.url}/?`))).toBe(true);
    expect(sts.requests.slice(before).map((r) => r.status)).toEqual([403, 403, 403]);
  });

  describe('refused offline, nothing fetched', () => {
    const cases: Array<[string, (url: string) => string | Promise<string>]> = [
      ['another host', (u) => u.replace('127.0.0.1', '127.0.0.2')],
      ['an attacker’s https host', (u) => u.replace(/^http:\/\/127\.0\.0\.1:\d+/, 'https://sts.us-east-1.amazonaws.com.evil.example')],
      ['userinfo before the host', (u) => u.replace('http://', 'http://127.0.0.1@')],
      ['another port', (u) => u.replace(/:(\d+)\//, (_m, p) => `:${Number(p) + 1}/`)],
      ['a path', (u) => u.replace('/?', '/x?')],
      ['another action', (u) => u.replace('Action=GetCallerIdentity', 'Action=AssumeRole')],
      ['another API version', (u) => u.replace('Version=2011-06-15', 'Version=2012-01-01')],
      ['an extra parameter', (u) => `${u}&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx`],
      ['a repeated parameter', (u) => `${u}&Action=GetCallerIdentity`],
      ['a fragment', (u) => `${u}#x`],
      ['an expiry past 900 s', (u) => u.replace('X-Amz-Expires=60', 'X-Amz-Expires=3600')],
      ['a zero expiry', (u) => u.replace('X-Amz-Expires=60', 'X-Amz-Expires=0')],
      ['more signed headers', (u) => u.replace('X-Amz-SignedHeaders=host', 'X-Amz-SignedHeaders=host%3Bx-amz-date')],
      ['another region in the credential scope', (u) => u.replace('%2Fus-east-1%2F', '%2Feu-west-1%2F')],
      ['another service in the credential scope', (u) => u.replace('%2Fsts%2F', '%2Fs3%2F')],
      ['an expired signature', async () => decode(await login(TEST_USER, { signingDate: new Date(Date.now() - 61_000) }))],
      ['a signing date far in the future', async () => decode(await login(TEST_USER, { signingDate: new Date(Date.now() + 3_600_000) }))],
    ];
    it.each(cases)('%s', async (_name, tamper) => {
      const f = countingFetch();
      const auth = createIamAuthenticator({ principals: [{ arn: '*', prefixes: ['*'] }], region: REGION, stsEndpoint: sts.url, fetchImpl: f.impl });
      const tampered = await tamper(decode(await login(TEST_USER)));
      expect(await auth.authenticate(IAM_USERNAME, encode(tampered))).toBeUndefined();
      expect(f.calls).toEqual([]);
    });

    it('a username other than AWS, or a password that is not base64url, is refused', async () => {
      const f = countingFetch();
      const auth = createIamAuthenticator({ principals: [{ arn: '*', prefixes: ['*'] }], region: REGION, stsEndpoint: sts.url, fetchImpl: f.impl });
      const password = await login(TEST_USER);
      expect(await auth.authenticate('aws', password)).toBeUndefined();
      expect(await auth.authenticate(IAM_USERNAME, 'not base64url!')).toBeUndefined();
      expect(await auth.authenticate(IAM_USERNAME, 'x'.repeat(9000))).toBeUndefined();
      expect(f.calls).toEqual([]);
    });

    it('without a test endpoint only https://sts.<configured region>.amazonaws.com is accepted; the stand-in’s URL is not', async () => {
      const f = countingFetch();
      const auth = createIamAuthenticator({ principals: [{ arn: '*', prefixes: ['*'] }], region: REGION, fetchImpl: f.impl });
      expect(await auth.authenticate(IAM_USERNAME, await login(TEST_USER))).toBeUndefined();
      expect(await auth.authenticate(IAM_USERNAME, await createLoginPassword({ region: 'eu-west-1', credentials: TEST_USER }))).toBeUndefined();
      expect(f.calls).toEqual([]);
    });
  });

  it('fetches exactly the URL the client signed from the real regional endpoint (session token encoding intact), without following redirects', async () => {
    const seen: Array<{ url: string; redirect?: string }> = [];
    const fetchImpl = (async (input: string | URL | Request, init?: RequestInit) => {
      seen.push({ url: String(input), redirect: init?.redirect });
      return new Response(`<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>${TEST_ROLE.arn}</Arn><UserId>x</UserId><Account>444455556666</Account></GetCallerIdentityResult></GetCallerIdentityResponse>`, { status: 200 });
    }) as typeof fetch;
    const auth = createIamAuthenticator({ principals, region: 'eu-west-1', fetchImpl });
    const password = await createLoginPassword({ region: 'eu-west-1', credentials: TEST_ROLE });
    expect((await auth.authenticate(IAM_USERNAME, password))?.prefixes).toEqual(['k8s']);
    expect(seen).toEqual([{ url: decode(password), redirect: 'manual' }]);
  });

  it('STS unreachable, 5xx, throttled or answering no identity → throws (cannot decide); 400/403 → undefined', async () => {
    const closedPort = await pickFreePort();
    const down = createIamAuthenticator({ principals, region: REGION, stsEndpoint: `http://127.0.0.1:${closedPort}` });
    const pw = await createLoginPassword({ region: REGION, credentials: TEST_USER, endpoint: `http://127.0.0.1:${closedPort}` });
    await expect(down.authenticate(IAM_USERNAME, pw)).rejects.toThrow(/STS unreachable/);
    for (const [status, body, outcome] of [
      [500, '', 'throws'],
      [503, '', 'throws'],
      [429, '', 'throws'],
      [302, '', 'throws'],
      [200, '<Nothing/>', 'throws'],
      [200, '<Arn>arn:aws:iam::111122223333:user/ci/builder</Arn><Account>000000000000</Account>', 'throws'],
      [400, '<ErrorResponse><Error><Code>ExpiredToken</Code></Error></ErrorResponse>', 'undefined'],
      [403, '<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code></Error></ErrorResponse>', 'undefined'],
    ] as const) {
      const auth = createIamAuthenticator({ principals, region: REGION, stsEndpoint: sts.url, fetchImpl: (async () => new Response(body, { status })) as typeof fetch });
      const result = auth.authenticate(IAM_USERNAME, await login(TEST_USER));
      if (outcome === 'throws') await expect(result, `status ${status}`).rejects.toThrow();
      else await expect(result, `status ${status}`).resolves.toBeUndefined();
    }
  });
});

describe('ARN matching', () => {
  it.each([
    ['arn:aws:iam::111122223333:user/ci/*', 'arn:aws:iam::111122223333:user/ci/builder', true],
    ['arn:aws:iam::111122223333:user/ci/*', 'arn:aws:iam::111122223333:user/admin', false],
    ['arn:aws:iam::*:role/node-puller', 'arn:aws:iam::444455556666:role/node-puller', true],
    ['arn:aws:iam::111122223333:user/a.b', 'arn:aws:iam::111122223333:user/aXb', false],
    ['arn:aws:iam::111122223333:user/x', 'arn:aws:iam::111122223333:user/x2', false],
    ['*', 'arn:aws:iam::111122223333:root', true],
  ])('%s ~ %s → %s', (pattern, arn, expected) => expect(arnMatches(pattern, arn)).toBe(expected));

  it('an assumed-role ARN also answers to its role ARN (any partition); others only to themselves', () => {
    expect(callerArns('arn:aws:sts::444455556666:assumed-role/node-puller/i-1')).toEqual([
      'arn:aws:sts::444455556666:assumed-role/node-puller/i-1',
      'arn:aws:iam::444455556666:role/node-puller',
    ]);
    expect(callerArns('arn:aws-cn:sts::444455556666:assumed-role/r/s')[1]).toBe('arn:aws-cn:iam::444455556666:role/r');
    expect(callerArns('arn:aws:iam::111122223333:user/u')).toEqual(['arn:aws:iam::111122223333:user/u']);
    expect(callerArns('arn:aws:sts::111122223333:federated-user/u')).toEqual(['arn:aws:sts::111122223333:federated-user/u']);
  });

  it('checkLoginPassword rebuilds the URL from the checked parameters only', async () => {
    const password = await login(TEST_ROLE);
    const checked = checkLoginPassword(password, { origin: sts.url, region: REGION, now: Date.now() });
    expect(checked?.url).toBe(decode(password));
    expect(checked!.expiresAt - Date.now()).toBeLessThanOrEqual(60_000);
  });
});

describe('pullthrough login-password (the CLI)', () => {
  it('prints a password made from the SDK default chain’s credentials (here: the environment) that the authenticator accepts', async () => {
    const stdout = await new Promise<string>((ok, fail) =>
      execFile(
        process.execPath,
        ['--import', 'tsx', 'bin/pullthrough.ts', 'login-password', '--region', REGION, '--expires-in', '120'],
        {
          cwd: resolve(import.meta.dirname, '../..'),
          timeout: 30_000,
          env: {
            PATH: process.env.PATH,
            HOME: '/nonexistent',
            AWS_ACCESS_KEY_ID: TEST_ROLE.accessKeyId,
            AWS_SECRET_ACCESS_KEY: TEST_ROLE.secretAccessKey,
            AWS_SESSION_TOKEN: TEST_ROLE.sessionToken,
            AWS_EC2_METADATA_DISABLED: 'true',
            PULLTHROUGH_STS_ENDPOINT: sts.url,
          },
        },
        (err, out, errOut) => (err ? fail(new Error(`${err.message}\n${errOut}`)) : ok(out)),
      ),
    );
    const password = stdout.trim();
    expect(new URL(decode(password)).searchParams.get('X-Amz-Expires')).toBe('120');
    const auth = createIamAuthenticator({ principals, region: REGION, stsEndpoint: sts.url });
    expect((await auth.authenticate(IAM_USERNAME, password))?.subject).toBe(TEST_ROLE.arn);
  });
});
