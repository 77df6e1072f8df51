/**
 * The token endpoint, `/token` (Docker "Token Authentication Specification" and "OAuth2 Token
 * Authentication"):
 * - `GET /token?service=…&scope=…&scope=…&account=…` with `Authorization: Basic` (docker, skopeo, podman);
 * - `POST /token`, `application/x-www-form-urlencoded`: `grant_type=password`, `username`, `password`,
 *   `service`, `scope` (space-separated), `client_id` (containerd; docker with `--password-stdin` flows).
 * Success: 200 `{token, access_token, expires_in, issued_at}` (no refresh tokens are issued). The token grants
 * what was asked ∩ what the identity may pull (scopes.ts); a login without scopes (`docker login`) gets a
 * token with an empty `access`. The audience is always this cache's service, whatever `service` was sent.
 * No credentials → 401; wrong credentials → 401 and one failure counted for the source IP; too many failures
 * → 429 before any password is checked. Credentials and tokens are never logged.
 */
import type { RegistryRequest, RegistryResponse } from '../http/types.js';
import { API_VERSION_HEADER } from '../http/types.js';
import { RegistryError } from '../oci/errors.js';
import type { Log } from '../observe/log.js';
import { basicChallenge, serviceFor, type ChallengeSettings } from './challenge.js';
import type { TokenKeyProvider } from './keys.js';
import type { LoginLimiter } from './login-limiter.js';
import { grantAccess, parseScopes, type NameResolution } from './scopes.js';
import { signToken } from './tokens.js';
import type { Authenticator } from './types.js';

/** What the token endpoint is built from. `now` returns milliseconds since the epoch. */
export interface TokenEndpointDeps {
  settings: ChallengeSettings & { tokenTtlSeconds: number };
  authenticator: Authenticator;
  keys: TokenKeyProvider;
  limiter: LoginLimiter;
  names: NameResolution;
  log: Log;
  now(): number;
}

/** Largest form body read, bytes. */
const MAX_FORM_BYTES = 16 * 1024;

interface Credentials {
  username: string;
  password: string;
}

/** `Authorization: Basic base64(user:password)` → credentials (the password may contain `:`). */
function basicCredentials(header: string | undefined): Credentials | undefined {
  const m = /^basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** The request's credentials and requested scopes, from the query + Basic header (GET) or the form (POST). */
function readRequest(req: RegistryRequest): { credentials?: Credentials; scopes: string[] } {
  if (req.method === 'GET') return { credentials: basicCredentials(req.headers.authorization), scopes: req.query.getAll('scope') };
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') {
    throw new RegistryError('UNSUPPORTED', 'the token request must be application/x-www-form-urlencoded', { status: 400 });
  }
  const body = req.body ?? new Uint8Array();
  if (body.length > MAX_FORM_BYTES) throw new RegistryError('UNSUPPORTED', 'token request too large', { status: 400 });
  const form = new URLSearchParams(Buffer.from(body).toString('utf8'));
  const grant = form.get('grant_type');
  if (grant !== 'password') throw new RegistryError('UNSUPPORTED', 'grant_type must be password (no refresh tokens are issued)', { status: 400 });
  const username = form.get('username');
  const password = form.get('password');
  const credentials = username && password !== null ? { username, password } : basicCredentials(req.headers.authorization);
  return { credentials, scopes: [...form.getAll('scope'), ...req.query.getAll('scope')] };
}

function json(status: number, value: unknown): RegistryResponse {
  const body = JSON.stringify(value);
  return {
    status,
    headers: {
      ...API_VERSION_HEADER,
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(body)),
      'Cache-Control': 'no-store',
      Pragma: 'no-cache',
    },
    body,
  };
}

/** Builds the handler of `/token`; it throws RegistryErrors that the app turns into OCI error responses. */
export function createTokenEndpoint(deps: TokenEndpointDeps): (req: RegistryRequest) => Promise<RegistryResponse> {
  const { settings, log } = deps;
  const unauthorized = (req: RegistryRequest, message: string) =>
    new RegistryError('UNAUTHORIZED', message, { headers: { 'WWW-Authenticate': basicChallenge(req, settings) } });

  return async (req) => {
    if (req.method !== 'GET' && req.method !== 'POST') {
      throw new RegistryError('UNSUPPORTED', 'the token endpoint takes GET or POST', { headers: { Allow: 'GET, POST' } });
    }
    const ip = req.sourceIp ?? 'unknown';
    const { credentials, scopes } = readRequest(req);
    if (!credentials) throw unauthorized(req, 'authentication required');
    const wait = deps.limiter.retryAfter(ip, credentials.username, deps.now());
    if (wait > 0) {
      log.warn('login refused: too many failed logins', { username: credentials.username.slice(0, 128), sourceIp: ip, retryAfterSeconds: wait });
      throw new RegistryError('TOOMANYREQUESTS', 'too many failed logins; retry later', { headers: { 'Retry-After': String(wait) } });
    }

    let identity;
    try {
      identity = await deps.authenticator.authenticate(credentials.username, credentials.password, req.sourceIp);
    } catch (err) {
      log.error('login could not be checked', { sourceIp: ip, error: (err as Error).name, reason: (err as Error).message });
      throw new RegistryError('UNAVAILABLE', 'credentials cannot be checked right now; retry', { headers: { 'Retry-After': '5' } });
    }
    if (!identity) {
      deps.limiter.recordFailure(ip, credentials.username, deps.now());
      log.warn('login failed', { username: credentials.username.slice(0, 128), sourceIp: ip });
      throw unauthorized(req, 'incorrect username or password');
    }

    const access = grantAccess(parseScopes(scopes), identity, deps.names);
    let keys;
    try {
      keys = await deps.keys.keys();
    } catch (err) {
      log.error('token signing key unavailable', { reason: (err as Error).message });
      throw new RegistryError('UNAVAILABLE', 'tokens cannot be issued right now; retry', { headers: { 'Retry-After': '5' } });
    }
    const issued = await signToken({ keys, service: serviceFor(req, settings), subject: identity.subject, access, ttlSeconds: settings.tokenTtlSeconds, now: deps.now() });
    log.info('token issued', { subject: identity.subject, sourceIp: ip, access: access.map((a) => `${a.type}:${a.name}:${a.actions.join(',')}`) });
    return json(200, {
      token: issued.token,
      access_token: issued.token,
      expires_in: issued.expiresIn,
      issued_at: new Date(issued.issuedAt).toISOString(),
    });
  };
}
