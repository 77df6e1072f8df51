/**
 * Auth mode `iam`: log in with AWS credentials, the `aws ecr get-login-password` experience.
 *
 * The client presigns an STS `GetCallerIdentity` request with its own AWS credentials (SigV4, query string,
 * default 60 s) and sends it, base64url-encoded, as the password of user `AWS`:
 *
 *     npm run -s login-password -- --region eu-west-1 | docker login --username AWS --password-stdin cache.example.com
 *
 * The cache never sees the caller's secret key. It checks that the password is exactly such a request for the
 * configured region's STS endpoint (nothing else: an attacker-chosen host is never fetched), sends it to STS,
 * and STS answers who signed it. The ARN is matched against `auth.iam.principals`; an assumed-role ARN
 * `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` also matches patterns for `arn:aws:iam::ACCOUNT:role/ROLE`
 * (the role's path is not in the STS ARN: write `role/*NAME` or no path). `*` in a pattern matches any characters.
 *
 * The client side (making a password with the AWS SDK's signer) is in login-password.ts, so the registry
 * bundle that verifies passwords loads no signer.
 *
 * A password proves the identity to anyone holding it until it expires (≤ 900 s is accepted), like any
 * password; keep the expiry short. A verified password is remembered until its expiry (at most
 * {@link VERIFIED_CACHE_MS}), so a client's repeated token requests cost one STS call.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Authenticator, Identity } from './types.js';

/** The username of an IAM login (as with ECR). */
export const IAM_USERNAME = 'AWS';
/** Longest `X-Amz-Expires` accepted, seconds (what EKS accepts for the same kind of token). */
export const MAX_EXPIRES_SECONDS = 900;
/** Default lifetime of a login password, seconds. */
export const DEFAULT_EXPIRES_SECONDS = 60;
/** Milliseconds a verified password's identity is reused (never past the password's own expiry). */
export const VERIFIED_CACHE_MS = 60_000;
/** Milliseconds to wait for STS. */
const STS_TIMEOUT_MS = 5_000;
/** Largest password accepted (characters); a session token makes a URL of about 1.5 KB. */
const MAX_PASSWORD_CHARS = 8192;
/** Clock skew allowed for a signing date in the future (STS allows 5 minutes). */
const MAX_SKEW_MS = 5 * 60_000;
/** The STS action and API version a login password must presign. */
export const ACTION = 'GetCallerIdentity';
export const VERSION = '2011-06-15';
const REGION = /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$/;

/** AWS credentials (the SDK's `AwsCredentialIdentity`). */
export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** `https://sts.<region>.amazonaws.com` (`.amazonaws.com.cn` in China regions). */
export function stsOrigin(region: string): string {
  if (!REGION.test(region)) throw new Error(`not an AWS region: ${region}`);
  return `https://sts.${region}.amazonaws.com${region.startsWith('cn-') ? '.cn' : ''}`;
}

/** RFC 3986 encoding as SigV4 does it (encodeURIComponent leaves `!'()*`). */
export const escapeUri = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** A password that passed the offline checks: the URL to send to STS (rebuilt, not the client's text). */
export interface CheckedLoginUrl {
  url: string;
  /** Milliseconds since the epoch at which the presigned request expires. */
  expiresAt: number;
}

const REQUIRED = ['Action', 'Version', 'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature'];
const OPTIONAL = ['X-Amz-Security-Token'];

/**
 * Checks a login password without contacting anyone: a presigned `GetCallerIdentity` GET for exactly `origin`
 * (scheme, host and port), signed for `region`, `X-Amz-Expires` ≤ 900 s and not expired, only `host` signed,
 * and no query parameter other than the ones SigV4 presigning sets. Returns `undefined` when it is not.
 */
export function checkLoginPassword(password: string, opts: { origin: string; region: string; now: number }): CheckedLoginUrl | undefined {
  if (password.length > MAX_PASSWORD_CHARS || !/^[A-Za-z0-9_-]+={0,2}$/.test(password)) return undefined;
  const text = Buffer.from(password, 'base64url').toString('latin1');
  if (!/^[\x21-\x7e]+$/.test(text) || !text.startsWith(`${opts.origin}/?`)) return undefined;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return undefined;
  }
  if (url.origin !== opts.origin || url.pathname !== '/' || url.username || url.password || url.hash) return undefined;
  const params = new Map<string, string>();
  for (const [k, v] of url.searchParams) {
    if (params.has(k) || !(REQUIRED.includes(k) || OPTIONAL.includes(k))) return undefined;
    params.set(k, v);
  }
  if (!REQUIRED.every((k) => params.has(k))) return undefined;
  const date = params.get('X-Amz-Date')!;
  const credential = /^[A-Z0-9]{16,128}\/(\d{8})\/([a-z0-9-]+)\/sts\/aws4_request$/.exec(params.get('X-Amz-Credential')!);
  const expires = params.get('X-Amz-Expires')!;
  const token = params.get('X-Amz-Security-Token');
  if (
    params.get('Action') !== ACTION ||
    params.get('Version') !== VERSION ||
    params.get('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256' ||
    params.get('X-Amz-SignedHeaders') !== 'host' ||
    !/^[0-9a-f]{64}$/.test(params.get('X-Amz-Signature')!) ||
    !credential ||
    credential[2] !== opts.region ||
    !/^\d{8}T\d{6}Z$/.test(date) ||
    !date.startsWith(credential[1]) ||
    !/^[1-9]\d{0,2}$/.test(expires) ||
    Number(expires) > MAX_EXPIRES_SECONDS ||
    (token !== undefined && !/^[A-Za-z0-9+/=]{1,4096}$/.test(token))
  ) {
    return undefined;
  }
  const signedAt = Date.UTC(+date.slice(0, 4), +date.slice(4, 6) - 1, +date.slice(6, 8), +date.slice(9, 11), +date.slice(11, 13), +date.slice(13, 15));
  const expiresAt = signedAt + Number(expires) * 1000;
  if (!Number.isFinite(signedAt) || signedAt > opts.now + MAX_SKEW_MS || expiresAt <= opts.now) return undefined;
  // Rebuilt from the checked values only (in the client's order): what is fetched is exactly what was checked.
  const query = [...params].map(([k, v]) => `${escapeUri(k)}=${escapeUri(v)}`).join('&');
  return { url: `${opts.origin}/?${query}`, expiresAt };
}

/** The ARNs a caller answers to: itself, and for an assumed role also the role's IAM ARN. */
export function callerArns(arn: string): string[] {
  const m = /^arn:([a-z-]+):sts::(\d{12}):assumed-role\/([^/]+)\/[^/]+$/.exec(arn);
  return m ? [arn, `arn:${m[1]}:iam::${m[2]}:role/${m[3]}`] : [arn];
}

/** Whether `arn` matches `pattern`, where `*` matches any characters (and nothing else is special). */
export function arnMatches(pattern: string, arn: string): boolean {
  const source = pattern.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${source}$`, 's').test(arn);
}

/**
 * Authenticator for auth mode `iam` (see the file comment). `stsEndpoint` (tests only) replaces
 * `https://sts.<region>.amazonaws.com` as the one origin a password may name.
 *
 * - wrong username, malformed or tampered password, STS answering 400/401/403 (bad, expired or revoked
 *   credentials), or an ARN no principal matches → `undefined`;
 * - STS unreachable, slow (5 s), throttling, 5xx or an answer without an ARN → throws (cannot decide).
 */
export function createIamAuthenticator(opts: {
  principals: Array<{ arn: string; prefixes: string[] }>;
  region: string;
  stsEndpoint?: string;
  fetchImpl?: typeof fetch;
  now?: () => number;
}): Authenticator {
  const origin = opts.stsEndpoint ? new URL(opts.stsEndpoint).origin : stsOrigin(opts.region);
  const doFetch = opts.fetchImpl ?? fetch;
  const now = opts.now ?? Date.now;
  const verified = new LRUCache<string, { arn: string; until: number }>({ max: 1000 });

  async function callerOf(checked: CheckedLoginUrl): Promise<string | undefined> {
    let res: Response;
    try {
      res = await doFetch(checked.url, { method: 'GET', redirect: 'manual', signal: AbortSignal.timeout(STS_TIMEOUT_MS) });
    } catch (err) {
      throw new Error(`STS unreachable: ${(err as Error).message}`);
    }
    if (res.status === 400 || res.status === 401 || res.status === 403) {
      await res.body?.cancel().catch(() => undefined);
      return undefined;
    }
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => undefined);
      throw new Error(`STS answered ${res.status}`);
    }
    const xml = (await res.text()).slice(0, 64 * 1024);
    const arn = /<Arn>\s*(arn:[^<\s]{1,2048})\s*<\/Arn>/.exec(xml)?.[1];
    const account = /<Account>\s*(\d{12})\s*<\/Account>/.exec(xml)?.[1];
    if (!arn || !account || arn.split(':')[4] !== account) throw new Error('STS answered no caller identity');
    return arn;
  }

  return {
    async authenticate(username, password) {
      if (username !== IAM_USERNAME) return undefined;
      const key = createHash('sha256').update(password).digest('base64url');
      let arn: string | undefined;
      const hit = verified.get(key);
      if (hit && hit.until > now()) {
        arn = hit.arn;
      } else {
        const checked = checkLoginPassword(password, { origin, region: opts.region, now: now() });
        if (!checked) return undefined;
        arn = await callerOf(checked);
        if (!arn) return undefined;
        verified.set(key, { arn, until: Math.min(checked.expiresAt, now() + VERIFIED_CACHE_MS) });
      }
      const candidates = callerArns(arn);
      const prefixes = new Set<string>();
      for (const p of opts.principals) {
        if (candidates.some((c) => arnMatches(p.arn, c))) for (const prefix of p.prefixes) prefixes.add(prefix);
      }
      if (prefixes.size === 0) return undefined;
      const identity: Identity = { kind: 'iam', subject: arn, prefixes: [...prefixes] };
      return identity;
    },
  };
}
