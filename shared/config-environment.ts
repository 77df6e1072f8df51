/**
 * The process environment, read once and validated: {@link readEnvironment} is the only code that reads
 * `process.env` for settings (a rule's `accessTokenEnv` aside, which `parseConfig` in config.ts resolves).
 * `config.ts` re-exports everything here, so callers import it from there. The variables:
 * - `PULLTHROUGH_CONFIG`: path of a YAML config file (optional; built-in rules otherwise)
 * - `PULLTHROUGH_DATA_DIR`: embedded storage directory (default `./.data`)
 * - `PULLTHROUGH_PORT`: local server port (default 5000)
 * - `PULLTHROUGH_HOST`: local server address (default 127.0.0.1; `0.0.0.0` to serve other machines)
 * - `PULLTHROUGH_METRICS_PORT`: port of the local server's Prometheus listener (`GET /metrics`); unset = off
 * - `PULLTHROUGH_METRICS_HOST`: its address (default 127.0.0.1)
 * - `PULLTHROUGH_ACCOUNTING`: `off` → no request accounting at all: no `cache`/`rule` fields, no metrics, no stats
 *   counters (what bench/metrics-overhead.ts measures the accounting against); default `on`
 * - `PULLTHROUGH_LOG_LEVEL`: DEBUG | INFO | WARN | ERROR | SILENT, any case (default INFO); anything else stops the start
 * - `PULLTHROUGH_BACKEND`: `embedded` (SQLite + filesystem, default) or `aws` (DynamoDB + S3)
 * - `PULLTHROUGH_TABLE`, `PULLTHROUGH_BUCKET`: the DynamoDB table and S3 bucket (backend `aws`); endpoints come
 *   from the SDK's own `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_S3` (DynamoDB Local, MinIO, s3rver…)
 * - `PULLTHROUGH_URL_TTL_SECONDS`: lifetime of presigned/signed blob URLs (default 900)
 * - `PULLTHROUGH_FILL_FUNCTION`: name of the fill Lambda to invoke asynchronously on a blob miss (AWS);
 *   unset → fills run in the process that took the lease
 * - `PULLTHROUGH_EVENT_BUS`: EventBridge bus that receives a `Tag Moved` event per digest change (optional)
 * - `PULLTHROUGH_REQUIRE_AUTH`: `true` → refuse to start with `auth.mode: none` (the AWS deploy sets it unless
 *   anonymous clients are allowed explicitly)
 * - `PULLTHROUGH_TOKEN_KEY`: where the token signing key set lives: `ssm:<parameter name>` or
 *   `secretsmanager:<secret id>` (a JWK or a JSON array of JWKs); unset → `<data dir>/token-key.json`, created
 *   on first use. Required on Lambda when client auth is on (each container would otherwise sign with its own key).
 * - `PULLTHROUGH_STS_ENDPOINT`: auth mode `iam` only, tests only: the STS stand-in (`http://127.0.0.1:PORT`) whose
 *   presigned URLs are accepted instead of `https://sts.<region>.amazonaws.com`
 * - `AWS_REGION` / `AWS_DEFAULT_REGION`: default STS region of `login-password`
 * - `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` (or their lower-case forms, which win, as in curl): the outbound
 *   proxy for upstream traffic (shared/upstream/dispatcher.ts); AWS SDK calls do not use it
 */

/** Where the token signing key set is read from on AWS (`PULLTHROUGH_TOKEN_KEY`). */
export interface TokenKeySource {
  kind: 'ssm' | 'secretsmanager';
  /** The SSM parameter name or the Secrets Manager secret id/ARN. */
  id: string;
}

/** Parses `PULLTHROUGH_TOKEN_KEY`: `ssm:<parameter name>` or `secretsmanager:<secret id>`. */
export function parseTokenKeySource(value: string): TokenKeySource {
  const m = /^(ssm|secretsmanager):(.+)$/.exec(value);
  if (!m) throw new Error('PULLTHROUGH_TOKEN_KEY must be ssm:<parameter name> or secretsmanager:<secret id>');
  return { kind: m[1] as TokenKeySource['kind'], id: m[2] };
}

/** The log levels `PULLTHROUGH_LOG_LEVEL` accepts (any case), quietest last. */
export const LOG_LEVELS = ['DEBUG', 'INFO', 'WARN', 'ERROR', 'SILENT'];

/** Settings of the process, read from the environment once. */
export interface Environment {
  configPath?: string;
  dataDir: string;
  port: number;
  /** Address the local server listens on. */
  host: string;
  /** Port of the Prometheus listener (`/metrics`); undefined = no listener. */
  metricsPort?: number;
  /** Address of the Prometheus listener. */
  metricsHost: string;
  /** False when `PULLTHROUGH_ACCOUNTING=off`: no request scope, metrics or stats counters. */
  accounting: boolean;
  /** One of {@link LOG_LEVELS}, upper-case. */
  logLevel: string;
  backend: 'embedded' | 'aws';
  table?: string;
  bucket?: string;
  /** Custom S3 endpoint (path-style addressing is used with one). */
  s3Endpoint?: string;
  /** Seconds. */
  urlTtlSeconds: number;
  fillFunction?: string;
  eventBus?: string;
  /** Refuse to start with `auth.mode: none` (`PULLTHROUGH_REQUIRE_AUTH=true`). */
  requireAuth: boolean;
  /** Token signing keys from SSM / Secrets Manager; unset → the local key file in the data dir. */
  tokenKey?: TokenKeySource;
  /** Running as a Lambda function (`AWS_LAMBDA_FUNCTION_NAME` is set): no per-process key file then. */
  inLambda: boolean;
  /** STS stand-in origin for auth mode `iam` (tests only). */
  stsEndpoint?: string;
  /** The AWS region of the environment (`login-password`'s default STS region). */
  awsRegion?: string;
  /** Outbound proxy for upstream requests (`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`); empty when none is set. */
  proxy: { httpProxy?: string; httpsProxy?: string; noProxy?: string };
}

/**
 * Settings that cannot start the process: every problem of the environment (one line each) and of the config file
 * (its own block, config.ts) at once, so a start fails once, not once per fix. A lone environment problem is its
 * own one-line message; otherwise `invalid environment:` with a `✖` line per variable, then the config's block.
 */
export class StartupError extends Error {
  constructor(
    readonly environment: string[],
    readonly config?: string,
  ) {
    const lines = environment.length ? [`invalid environment:`, ...environment.map((p) => `✖ ${p}`)] : [];
    super(environment.length === 1 && !config ? environment[0] : [...lines, ...(config ? [config] : [])].join('\n'));
    this.name = 'StartupError';
  }
}

/** A proxy variable, lower-case form first (curl's rule); `undefined` when unset or empty. */
function proxyVariable(env: NodeJS.ProcessEnv, name: string, problems: string[]): string | undefined {
  const value = env[name.toLowerCase()] || env[name] || undefined;
  if (value !== undefined && name !== 'NO_PROXY' && !URL.canParse(value.includes('://') ? value : `http://${value}`)) {
    problems.push(`${name} must be a proxy URL such as http://proxy.internal:3128`);
  }
  return value;
}

/** A port number variable (0-65535); a problem noted (and 0 returned) otherwise. */
function portNumber(name: string, text: string, problems: string[]): number {
  const port = Number(text);
  if (!/^\d{1,5}$/.test(text) || port > 65535) problems.push(`${name} must be a port number (0-65535), got ${JSON.stringify(text)}`);
  return port;
}

/** `PULLTHROUGH_URL_TTL_SECONDS` (default 900), or undefined when it is not 1..604800 (the S3 presigned URL maximum). */
export function urlTtlSecondsOf(env: NodeJS.ProcessEnv): number | undefined {
  const ttl = Number(env.PULLTHROUGH_URL_TTL_SECONDS ?? 900);
  return Number.isInteger(ttl) && ttl >= 1 && ttl <= 7 * 24 * 3600 ? ttl : undefined;
}

/**
 * Reads the process environment (the only place that does).
 * @throws StartupError listing every variable that is wrong, not only the first.
 */
export function readEnvironment(env: NodeJS.ProcessEnv = process.env): Environment {
  const problems: string[] = [];
  const port = portNumber('PULLTHROUGH_PORT', env.PULLTHROUGH_PORT || '5000', problems);
  const accounting = env.PULLTHROUGH_ACCOUNTING || 'on';
  if (accounting !== 'on' && accounting !== 'off') problems.push(`PULLTHROUGH_ACCOUNTING must be on or off, got ${JSON.stringify(accounting)}`);
  const metricsPort = env.PULLTHROUGH_METRICS_PORT ? portNumber('PULLTHROUGH_METRICS_PORT', env.PULLTHROUGH_METRICS_PORT, problems) : undefined;
  const host = env.PULLTHROUGH_HOST || '127.0.0.1';
  const metricsHost = env.PULLTHROUGH_METRICS_HOST || '127.0.0.1';
  // One listener cannot take both: the metrics listener has a port of its own (or none). Port 0 picks two free ones.
  if (metricsPort !== undefined && metricsPort !== 0 && metricsPort === port) {
    problems.push(`PULLTHROUGH_METRICS_PORT must differ from PULLTHROUGH_PORT (both ${port}): the Prometheus listener needs a port of its own`);
  }
  const logLevel = (env.PULLTHROUGH_LOG_LEVEL || 'INFO').toUpperCase();
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`PULLTHROUGH_LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(env.PULLTHROUGH_LOG_LEVEL)}`);
  const backend = env.PULLTHROUGH_BACKEND || 'embedded';
  if (backend !== 'embedded' && backend !== 'aws') problems.push(`PULLTHROUGH_BACKEND must be embedded or aws, got ${backend}`);
  if (backend === 'aws' && (!env.PULLTHROUGH_TABLE || !env.PULLTHROUGH_BUCKET)) {
    problems.push('PULLTHROUGH_BACKEND=aws needs PULLTHROUGH_TABLE and PULLTHROUGH_BUCKET');
  }
  if (env.PULLTHROUGH_STS_ENDPOINT && !/^https?:\/\/[^/?#@]+\/?$/.test(env.PULLTHROUGH_STS_ENDPOINT)) {
    problems.push('PULLTHROUGH_STS_ENDPOINT must be an origin such as http://127.0.0.1:4566');
  }
  const urlTtlSeconds = urlTtlSecondsOf(env);
  if (urlTtlSeconds === undefined) problems.push('PULLTHROUGH_URL_TTL_SECONDS must be 1..604800 (the S3 presigned URL maximum)');
  const requireAuth = env.PULLTHROUGH_REQUIRE_AUTH ?? '';
  if (!['', 'true', 'false'].includes(requireAuth)) problems.push(`PULLTHROUGH_REQUIRE_AUTH must be true or false, got ${requireAuth}`);
  let tokenKey: TokenKeySource | undefined;
  try {
    tokenKey = env.PULLTHROUGH_TOKEN_KEY ? parseTokenKeySource(env.PULLTHROUGH_TOKEN_KEY) : undefined;
  } catch (err) {
    problems.push((err as Error).message);
  }
  const proxy = { httpProxy: proxyVariable(env, 'HTTP_PROXY', problems), httpsProxy: proxyVariable(env, 'HTTPS_PROXY', problems), noProxy: proxyVariable(env, 'NO_PROXY', problems) };
  if (problems.length) throw new StartupError(problems);
  return {
    configPath: env.PULLTHROUGH_CONFIG || undefined,
    dataDir: env.PULLTHROUGH_DATA_DIR || './.data',
    port,
    host,
    metricsPort,
    metricsHost,
    accounting: accounting === 'on',
    logLevel,
    backend: backend as Environment['backend'],
    table: env.PULLTHROUGH_TABLE || undefined,
    bucket: env.PULLTHROUGH_BUCKET || undefined,
    s3Endpoint: env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined,
    urlTtlSeconds: urlTtlSeconds!,
    fillFunction: env.PULLTHROUGH_FILL_FUNCTION || undefined,
    eventBus: env.PULLTHROUGH_EVENT_BUS || undefined,
    requireAuth: requireAuth === 'true',
    tokenKey,
    inLambda: Boolean(env.AWS_LAMBDA_FUNCTION_NAME),
    stsEndpoint: env.PULLTHROUGH_STS_ENDPOINT || undefined,
    awsRegion: env.AWS_REGION || env.AWS_DEFAULT_REGION || undefined,
    proxy,
  };
}
