/**
 * The functions' one AWS endpoint (`AWS_ENDPOINT_URL`): a reverse proxy that enforces each function's role, then
 * forwards to moto (or, for Lambda Invoke, to ./invoke-standin.ts). moto's own enforcement cannot do this (see
 * ./moto.ts); here every request of a function is checked against the inline policies its role got from the
 * deployed template, with the real resource ARNs, and a denial answers as the service would (S3 403 AccessDenied,
 * DynamoDB 400 AccessDeniedException, …). So an action missing from serverless.yml fails here as on AWS.
 *
 * - The caller is the function whose role credentials signed the request (the access key in the SigV4
 *   `Authorization` header, or `X-Amz-Credential` of a presigned URL). Requests signed by other keys (the
 *   harness's own) pass unchecked.
 * - Presigned S3 URLs (what the registry hands clients for blobs) are verified as S3 does: the signature
 *   (recomputed with @smithy/signature-v4 from the signer's credentials), the expiry, and the signer's role
 *   allowing the action; so a URL is only good while the registry role may read that key.
 * - What a request asks, by service: S3 from method, path-style key and query (GetObject, HeadObject →
 *   s3:GetObject; PutObject, multipart create/part/complete → s3:PutObject; …); DynamoDB from `X-Amz-Target`
 *   and the table (and index) names in the body; Lambda Invoke from the path; EventBridge PutEvents, SSM
 *   GetParameter(s) and Secrets Manager GetSecretValue from the body. A request of any other kind from a
 *   function is refused with a message naming it, so a new kind of call is added here consciously.
 */
import { createHash, createHmac } from 'node:crypto';
import http from 'node:http';
import { SignatureV4 } from '@smithy/signature-v4';
import { listenOnLoopback } from '../reverse-proxy.js';
import { MOTO_ACCOUNT, MOTO_REGION } from './moto.js';
import { policiesAllow } from './iam-policy.js';
import type { DeployedFunction, DeployedStack } from './stack.js';

/** One checked request. */
export interface GateDecision {
  caller: string;
  service: string;
  action: string;
  resources: string[];
  allowed: boolean;
  presigned: boolean;
  /** Denied by {@link IamGate.denyNext}, not by the role. */
  injected?: true;
}

/** The running gate. */
export interface IamGate {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** Every request of a function, in order. */
  decisions: GateDecision[];
  /**
   * Denies the next `count` requests of `functionName` for `action` (e.g. `dynamodb:GetItem`) as if its role
   * lacked it: a fault for tests of the error path.
   */
  denyNext(functionName: string, action: string, count?: number): void;
  stop(): Promise<void>;
}

/** node:crypto as the `ChecksumConstructor` @smithy/signature-v4 wants (SHA-256, or HMAC-SHA-256 with a key). */
class Sha256 {
  private hash;
  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.hash = secret === undefined ? createHash('sha256') : createHmac('sha256', Sha256.bytes(secret));
  }
  private static bytes(data: string | ArrayBuffer | ArrayBufferView): string | Buffer {
    if (typeof data === 'string') return data;
    return ArrayBuffer.isView(data) ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : Buffer.from(data);
  }
  update(data: string | ArrayBuffer | ArrayBufferView) {
    this.hash.update(Sha256.bytes(data));
  }
  async digest() {
    return new Uint8Array(this.hash.digest());
  }
  reset() {}
}

const ARN = (service: string, resource: string) => `arn:aws:${service}:${MOTO_REGION}:${MOTO_ACCOUNT}:${resource}`;

/** What a request asks: an IAM action on resources, with the condition keys the request supplies. */
interface Ask {
  action: string;
  resources: string[];
  context?: Record<string, string>;
}

/** The S3 action and resource of a path-style request (IAM's names: HeadObject is s3:GetObject, parts are s3:PutObject…). */
function s3Request(method: string, url: URL, body: Buffer | undefined): Ask {
  const [, bucket = '', ...rest] = url.pathname.split('/');
  const key = decodeURIComponent(rest.join('/'));
  const q = url.searchParams;
  const object = `arn:aws:s3:::${bucket}/${key}`;
  const bucketArn = `arn:aws:s3:::${bucket}`;
  if (!key) {
    if (method === 'POST' && q.has('delete')) {
      const keys = [...(body?.toString('utf8') ?? '').matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => `${bucketArn}/${m[1]}`);
      return { action: 's3:DeleteObject', resources: keys };
    }
    if (method === 'GET' && q.has('uploads')) return { action: 's3:ListBucketMultipartUploads', resources: [bucketArn] };
    if (method === 'GET' || method === 'HEAD') {
      // ListObjects(V2)'s condition keys (the ones a policy may scope a listing with).
      const context = Object.fromEntries(['prefix', 'delimiter', 'max-keys'].flatMap((k) => (q.has(k) ? [[`s3:${k}`, q.get(k)!]] : [])));
      return { action: 's3:ListBucket', resources: [bucketArn], context };
    }
    return { action: `s3:${method} bucket`, resources: [bucketArn] };
  }
  if (method === 'GET' && q.has('uploadId')) return { action: 's3:ListMultipartUploadParts', resources: [object] };
  if (method === 'GET' || method === 'HEAD') return { action: 's3:GetObject', resources: [object] };
  if (method === 'PUT' || method === 'POST') return { action: 's3:PutObject', resources: [object] };
  if (method === 'DELETE') return { action: q.has('uploadId') ? 's3:AbortMultipartUpload' : 's3:DeleteObject', resources: [object] };
  return { action: `s3:${method} object`, resources: [object] };
}

/** The IAM actions and resources of a DynamoDB request (`X-Amz-Target: DynamoDB_20120810.<Operation>`). */
function dynamoDbRequest(target: string, body: any): Ask[] {
  const op = target.split('.').pop() ?? '';
  const table = (name: string, index?: string) => ARN('dynamodb', `table/${name}${index ? `/index/${index}` : ''}`);
  if (op === 'BatchWriteItem' || op === 'BatchGetItem') return [{ action: `dynamodb:${op}`, resources: Object.keys(body.RequestItems ?? {}).map((t) => table(t)) }];
  if (op === 'TransactWriteItems' || op === 'TransactGetItems') {
    const kinds: Record<string, string> = { Put: 'PutItem', Update: 'UpdateItem', Delete: 'DeleteItem', ConditionCheck: 'ConditionCheckItem', Get: 'GetItem' };
    return (body.TransactItems ?? []).flatMap((item: Record<string, { TableName: string }>) =>
      Object.entries(item).map(([kind, x]) => ({ action: `dynamodb:${kinds[kind] ?? kind}`, resources: [table(x.TableName)] })),
    );
  }
  return [{ action: `dynamodb:${op}`, resources: [table(body.TableName, body.IndexName)] }];
}

/** What a JSON-protocol request of `service` asks, or undefined when the gate has no rule for it. */
function jsonRequest(service: string, target: string, body: any): Ask[] | undefined {
  const op = target.split('.').pop() ?? '';
  if (service === 'dynamodb') return dynamoDbRequest(target, body);
  if (service === 'events' && op === 'PutEvents') {
    return [{ action: 'events:PutEvents', resources: (body.Entries ?? []).map((e: { EventBusName?: string }) => (e.EventBusName?.startsWith('arn:') ? e.EventBusName : ARN('events', `event-bus/${e.EventBusName ?? 'default'}`))) }];
  }
  if (service === 'ssm' && (op === 'GetParameter' || op === 'GetParameters')) {
    const names: string[] = op === 'GetParameter' ? [body.Name] : body.Names;
    return [{ action: `ssm:${op}`, resources: names.map((n) => (n.startsWith('arn:') ? n : ARN('ssm', `parameter/${n.split(':')[0].replace(/^\//, '')}`))) }];
  }
  if (service === 'secretsmanager' && op === 'GetSecretValue') {
    // A name stands for the secret's ARN, which ends in `-` and six random characters.
    const id: string = body.SecretId;
    return [{ action: 'secretsmanager:GetSecretValue', resources: [id.startsWith('arn:') ? id : ARN('secretsmanager', `secret:${id}-xxxxxx`)] }];
  }
  if (service === 'sts' && op === 'GetCallerIdentity') return [];
  return undefined;
}

/** The denial each protocol's client understands. */
function denial(service: string, message: string): { status: number; headers: Record<string, string>; body: string } {
  if (service === 's3') {
    return { status: 403, headers: { 'content-type': 'application/xml' }, body: `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>${message}</Message></Error>` };
  }
  if (service === 'lambda') return { status: 403, headers: { 'content-type': 'application/json', 'x-amzn-errortype': 'AccessDeniedException' }, body: JSON.stringify({ Type: 'User', Message: message }) };
  return { status: 400, headers: { 'content-type': 'application/x-amz-json-1.1' }, body: JSON.stringify({ __type: 'AccessDeniedException', message }) };
}

/** Whether a presigned URL's signature and expiry hold for `signer`'s credentials. */
async function presignedValid(url: URL, method: string, host: string, signer: DeployedFunction): Promise<boolean> {
  const q = Object.fromEntries(url.searchParams);
  const [, date, region, service] = (q['X-Amz-Credential'] ?? '').split('/');
  const d = q['X-Amz-Date'] ?? '';
  const signedAt = new Date(`${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}T${d.slice(9, 11)}:${d.slice(11, 13)}:${d.slice(13, 15)}Z`);
  const expiresIn = Number(q['X-Amz-Expires']);
  if (!date || Number.isNaN(signedAt.getTime()) || !(Date.now() <= signedAt.getTime() + expiresIn * 1000)) return false;
  const query = { ...q };
  for (const k of ['X-Amz-Signature', 'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Security-Token', 'X-Amz-Content-Sha256']) delete query[k];
  const headers: Record<string, string> = { host };
  if (q['X-Amz-Content-Sha256']) headers['X-Amz-Content-Sha256'] = q['X-Amz-Content-Sha256'];
  const v4 = new SignatureV4({ credentials: signer.credentials, region, service, sha256: Sha256, uriEscapePath: false, applyChecksum: false });
  const signed = await v4.presign(
    { method, protocol: 'http:', hostname: host.split(':')[0], port: Number(host.split(':')[1]), path: url.pathname, query, headers },
    { signingDate: signedAt, expiresIn, unsignableHeaders: new Set(['content-type']) },
  );
  return signed.query?.['X-Amz-Signature'] === q['X-Amz-Signature'];
}

/** Starts the gate in front of `motoUrl` (Lambda Invoke to `lambdaUrl`) for the functions of `stack`. */
export async function startIamGate(stack: DeployedStack, targets: { moto: string; lambda: () => string }): Promise<IamGate> {
  const decisions: GateDecision[] = [];
  const faults = new Map<string, number>();
  const byKey = new Map([...stack.functions.values()].map((f) => [f.credentials.accessKeyId, f]));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  const server = http.createServer(async (req, res) => {
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', 'http://gate');
    const presigned = url.searchParams.has('X-Amz-Signature');
    const credential = presigned ? (url.searchParams.get('X-Amz-Credential') ?? '') : (/Credential=([^,\s]+)/.exec(String(req.headers.authorization ?? ''))?.[1] ?? '');
    const [accessKey, , , service = ''] = credential.split('/');
    const caller = byKey.get(accessKey);
    const isJson = service !== 's3' && service !== 'lambda';
    // JSON requests (small) and S3 multi-object deletes are read first; everything else streams through.
    const buffered = isJson || (service === 's3' && url.searchParams.has('delete'));
    const body = buffered ? await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => resolve(Buffer.concat(chunks)));
    }) : undefined;
    const deny = (message: string) => {
      const d = denial(service, message);
      res.writeHead(d.status, d.headers);
      res.end(d.body);
    };

    if (caller) {
      let asks: Ask[] | undefined;
      if (service === 's3') asks = [s3Request(method, url, body)];
      else if (service === 'lambda') {
        const m = /^\/2015-03-31\/functions\/([^/]+)\/invocations$/.exec(url.pathname);
        const fn = m && [...stack.functions.values()].find((f) => f.name === decodeURIComponent(m[1]) || f.arn === decodeURIComponent(m[1]));
        asks = m ? [{ action: 'lambda:InvokeFunction', resources: [fn?.arn ?? ARN('lambda', `function:${decodeURIComponent(m[1])}`)] }] : undefined;
      } else {
        let parsed: unknown;
        try {
          parsed = JSON.parse(body!.toString('utf8') || '{}');
        } catch {
          parsed = {};
        }
        asks = jsonRequest(service, String(req.headers['x-amz-target'] ?? ''), parsed);
      }
      if (!asks) return deny(`deployed-shape IAM gate: no rule for ${service} ${method} ${url.pathname} ${req.headers['x-amz-target'] ?? ''} from ${caller.name}: add one to test/support/deployed/iam-gate.ts`);
      if (presigned && !(await presignedValid(url, method, String(req.headers.host), caller))) {
        decisions.push({ caller: caller.name, service, action: asks[0]?.action ?? '', resources: asks[0]?.resources ?? [], allowed: false, presigned });
        return deny('Request has expired or the signature does not match');
      }
      for (const ask of asks) {
        const fault = `${caller.name} ${ask.action}`;
        const injected = (faults.get(fault) ?? 0) > 0;
        if (injected) faults.set(fault, faults.get(fault)! - 1);
        const allowed = !injected && ask.resources.every((r) => policiesAllow(caller.policies, ask.action, r, ask.context));
        decisions.push({ caller: caller.name, service, action: ask.action, resources: ask.resources, allowed, presigned, ...(injected ? { injected } : {}) });
        if (!allowed) return deny(`User: ${caller.roleArn}/${caller.name} is not authorized to perform: ${ask.action} on resource: ${ask.resources.join(', ')}`);
      }
    } else if (presigned) {
      return deny(`The AWS Access Key Id you provided does not exist in our records (${accessKey})`);
    }

    const target = new URL(service === 'lambda' ? targets.lambda() : targets.moto);
    const upstream = http.request(
      { host: target.hostname, port: target.port, method, path: req.url, headers: req.headers, agent },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    upstream.on('error', (e) => (res.headersSent ? res.destroy(e) : (res.writeHead(502), res.end(String(e)))));
    if (body) upstream.end(body);
    else req.pipe(upstream);
  });
  const url = await listenOnLoopback(server);
  return {
    url,
    decisions,
    denyNext(functionName, action, count = 1) {
      faults.set(`${functionName} ${action}`, (faults.get(`${functionName} ${action}`) ?? 0) + count);
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      }),
  };
}
