/**
 * A loopback stand-in for STS `GetCallerIdentity` called with a presigned URL (query-string SigV4), for tests of
 * auth mode `iam`. It knows a few test credentials and the identity each belongs to, recomputes the signature
 * of every request with the AWS SDK's own signer (@smithy/signature-v4) over the query it received (minus
 * `X-Amz-Signature`) and the `Host` it was sent to, compares in constant time, and answers like STS:
 * the `GetCallerIdentityResponse` XML, or 403 with an `ErrorResponse` (unknown key, wrong session token,
 * altered request or signature, expired). Every request is recorded, so a test can prove a password was
 * rejected without contacting STS.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Sha256 } from '@smithy/core/checksum';
import { SignatureV4 } from '@smithy/signature-v4';

/** Test credentials and who they are. */
export interface StsTestPrincipal {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  arn: string;
}

/** An IAM user (long-term keys). */
export const TEST_USER: StsTestPrincipal = {
  accessKeyId: 'AKIAPULLTHROUGHTEST1',
  secretAccessKey: 'user-secret-key/pullthrough+test0000000',
  arn: 'arn:aws:iam::111122223333:user/ci/builder',
};

/** An assumed role (temporary credentials with a session token). */
export const TEST_ROLE: StsTestPrincipal = {
  accessKeyId: 'ASIAPULLTHROUGHTEST2',
  secretAccessKey: 'role-secret-key/pullthrough+test0000000',
  sessionToken: 'IQoJb3JpZ2luX2VjEPT//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+pullthrough+test+session+token==',
  arn: 'arn:aws:sts::444455556666:assumed-role/node-puller/i-0123456789abcdef0',
};

/** Keys of someone no principal names. */
export const TEST_STRANGER: StsTestPrincipal = {
  accessKeyId: 'AKIAPULLTHROUGHTEST3',
  secretAccessKey: 'stranger-secret-key/pullthrough+test000',
  arn: 'arn:aws:iam::999988887777:user/stranger',
};

export interface StsStandin {
  /** `http://127.0.0.1:PORT`: pass as `stsEndpoint` / `PULLTHROUGH_STS_ENDPOINT` and as the login endpoint. */
  url: string;
  /** Every request: path with query, and the status answered. */
  requests: Array<{ path: string; status: number }>;
  close(): Promise<void>;
}

const xmlEscape = (s: string) => s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);

function errorXml(code: string, message: string): string {
  return `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n  <Error>\n    <Type>Sender</Type>\n    <Code>${code}</Code>\n    <Message>${xmlEscape(message)}</Message>\n  </Error>\n  <RequestId>00000000-0000-4000-8000-000000000000</RequestId>\n</ErrorResponse>\n`;
}

function identityXml(p: StsTestPrincipal): string {
  const account = p.arn.split(':')[4];
  return `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n  <GetCallerIdentityResult>\n    <Arn>${p.arn}</Arn>\n    <UserId>${p.accessKeyId}</UserId>\n    <Account>${account}</Account>\n  </GetCallerIdentityResult>\n  <ResponseMetadata>\n    <RequestId>00000000-0000-4000-8000-000000000001</RequestId>\n  </ResponseMetadata>\n</GetCallerIdentityResponse>\n`;
}

/** Parses `YYYYMMDDTHHMMSSZ`. */
function parseAmzDate(s: string): Date | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  return m ? new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6])) : undefined;
}

/** Checks one presigned request; returns the principal, or the STS error to answer. */
async function verify(
  method: string,
  host: string,
  url: URL,
  principals: StsTestPrincipal[],
  now: number,
): Promise<StsTestPrincipal | { code: string; message: string }> {
  const q = url.searchParams;
  const one = (k: string) => (q.getAll(k).length === 1 ? q.get(k)! : undefined);
  if (method !== 'GET' || url.pathname !== '/') return { code: 'InvalidAction', message: 'only GET / is served here' };
  if (one('Action') !== 'GetCallerIdentity' || one('Version') !== '2011-06-15') return { code: 'InvalidAction', message: 'Could not find operation' };
  const credential = /^([A-Z0-9]+)\/(\d{8})\/([a-z0-9-]+)\/(sts)\/aws4_request$/.exec(one('X-Amz-Credential') ?? '');
  const date = parseAmzDate(one('X-Amz-Date') ?? '');
  const expires = Number(one('X-Amz-Expires'));
  const signature = one('X-Amz-Signature');
  if (!credential || !date || !Number.isInteger(expires) || expires < 1 || !signature || one('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256') {
    return { code: 'IncompleteSignature', message: 'Request is missing Authentication Token' };
  }
  const principal = principals.find((p) => p.accessKeyId === credential[1]);
  if (!principal) return { code: 'InvalidClientTokenId', message: 'The security token included in the request is invalid.' };
  if ((one('X-Amz-Security-Token') ?? undefined) !== principal.sessionToken) {
    return { code: 'InvalidClientTokenId', message: 'The security token included in the request is invalid.' };
  }
  if (one('X-Amz-SignedHeaders') !== 'host') return { code: 'SignatureDoesNotMatch', message: 'only host is signed by these tests' };
  if (now > date.getTime() + expires * 1000) return { code: 'ExpiredToken', message: 'Request has expired' };
  // Recompute with the SDK's signer: every other query parameter is part of what is signed.
  const query: Record<string, string> = {};
  for (const [k, v] of q) if (!k.startsWith('X-Amz-')) query[k] = v;
  const [hostname, port] = host.split(':');
  const signer = new SignatureV4({ service: 'sts', region: credential[3], credentials: principal, sha256: Sha256, uriEscapePath: true });
  const expected = await signer.presign(
    { method: 'GET', protocol: 'http:', hostname, port: port ? Number(port) : undefined, path: '/', query, headers: { host } },
    { expiresIn: expires, signingDate: date, signingRegion: credential[3] },
  );
  const want = Buffer.from(String(expected.query?.['X-Amz-Signature'] ?? ''));
  const got = Buffer.from(signature);
  if (want.length !== got.length || !timingSafeEqual(want, got)) {
    return { code: 'SignatureDoesNotMatch', message: 'The request signature we calculated does not match the signature you provided.' };
  }
  return principal;
}

/** Starts the stand-in on 127.0.0.1 (free port). `now` is its clock (ms), for expiry tests. */
export async function startStsStandin(opts: { principals?: StsTestPrincipal[]; now?: () => number } = {}): Promise<StsStandin> {
  const principals = opts.principals ?? [TEST_USER, TEST_ROLE, TEST_STRANGER];
  const now = opts.now ?? Date.now;
  const requests: StsStandin['requests'] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://sts.invalid');
    void verify(req.method ?? 'GET', req.headers.host ?? '', url, principals, now()).then(
      (result) => {
        const ok = 'arn' in result;
        const status = ok ? 200 : 403;
        requests.push({ path: req.url ?? '/', status });
        res.writeHead(status, { 'Content-Type': 'text/xml' });
        res.end(ok ? identityXml(result) : errorXml(result.code, result.message));
      },
      () => {
        requests.push({ path: req.url ?? '/', status: 500 });
        res.writeHead(500).end();
      },
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
