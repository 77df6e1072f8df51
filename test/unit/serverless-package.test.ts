/**
 * `osls package` of serverless.yml, checked the way CloudFormation and Lambda would take it:
 * - the generated template, every resource validated against the CloudFormation resource specification
 *   (@aws-cdk/aws-service-spec: types, property names at every depth, required properties, Ref/GetAtt/Sub
 *   targets and attribute names, conditions), then what matters asserted: routes, schedule, the table (as the
 *   DynamoDB adapter defines it), bucket and bucket policy, one least-privilege role per function, runtime and
 *   architecture, log retention, client auth (the /token routes, PULLTHROUGH_REQUIRE_AUTH, the token key and
 *   upstream credential secrets each role may read); packaged a second time with every optional parameter set
 *   (custom domain, EventBridge bus, anonymous clients allowed, a token key in SSM with its KMS key, another
 *   upstream secrets prefix) and a third time as a production deploy would be (a token key in Secrets Manager);
 * - the zips (one per function): an ESM bundle with the AWS SDK inside, its source map and
 *   pullthrough.config.yml, no node_modules and no better-sqlite3;
 * - the bundles, unzipped each into a task root with no node_modules above it and run in a plain Node process,
 *   the way the Lambda runtime loads them: with the default params all four refuse the shipped config (auth mode
 *   none); with anonymous clients allowed, registry answers `GET /v2/` with 200 and reads the packaged config,
 *   refresh runs a scheduled pass against a loopback DynamoDB stand-in (only indexes the table has, only
 *   operations its role allows), fill loads; in token mode with the key in a loopback Secrets Manager stand-in,
 *   registry issues tokens on GET and POST /token and accepts them, fill and refresh start without reading it.
 *
 * Offline: dummy AWS credentials, every AWS endpoint on loopback, no npm install (nothing is external). Each
 * packaging runs in a scratch copy of the service (top-level files copied, folders symlinked), so it writes
 * neither `.esbuild/` nor `.serverless/` into the work tree, and never meets a concurrent `npm run package` there.
 */
import { loadAwsServiceSpec } from '@aws-cdk/aws-service-spec';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isBuiltin } from 'node:module';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHttpApiEvent } from '../../shared/http/lambda-event.js';
import { loadConfig } from '../../shared/config.js';
import { generateSigningJwk } from '../../shared/auth/keys.js';
import { hashPassword } from '../../shared/auth/passwords.js';
import { TABLE_KEY_SCHEMA, TTL_ATTRIBUTE } from '../../shared/store/dynamodb-index.js';
import { scratchDir } from '../support/scratch.js';
import { EMF_METRIC_NAMES } from '../../shared/observe/emf.js';
import { ALARM_TOPIC, DUMMY_AWS, EVERY_OPTION, oslsPackage, ROOT, TOKEN_KEY_KMS_KEY, unzipInto, type CfnTemplate, type Packaged } from '../support/serverless-package.js';

const run = promisify(execFile);
const FUNCTIONS = ['registry', 'fill', 'refresh', 'gc'] as const;
type FunctionName = (typeof FUNCTIONS)[number];
/** A production deploy: client auth required (the default), the token key in Secrets Manager (by name). */
const SECURED = ['--param', 'tokenKey=secretsmanager:pullthrough-token-key'];

// ---------------------------------------------------------------------------------------------------------------
// Template validation against the CloudFormation resource specification
// ---------------------------------------------------------------------------------------------------------------

type SpecDatabase = Awaited<ReturnType<typeof loadAwsServiceSpec>>;
/** What the checks read of the specification's types (@aws-cdk/service-spec-types). */
type SpecType =
  | { type: 'string' | 'number' | 'integer' | 'boolean' | 'json' | 'date-time' | 'null' | 'tag' }
  | { type: 'ref'; reference: { $ref: string } }
  | { type: 'array' | 'map'; element: SpecType }
  | { type: 'union'; types: SpecType[] };
type SpecProperties = Record<string, { required?: boolean; type: SpecType }>;
interface SpecResource {
  cloudFormationType: string;
  properties: SpecProperties;
  attributes: Record<string, unknown>;
}

const RESOURCE_KEYS = new Set(['Type', 'Properties', 'Condition', 'DependsOn', 'DeletionPolicy', 'UpdateReplacePolicy', 'Metadata', 'UpdatePolicy', 'CreationPolicy']);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
/** `{ Ref }` or `{ Fn::… }`: a value CloudFormation computes, so its type is not checked here (its targets are). */
const isIntrinsic = (v: unknown): boolean => {
  if (!isObject(v)) return false;
  const keys = Object.keys(v);
  return keys.length === 1 && (keys[0] === 'Ref' || keys[0].startsWith('Fn::'));
};

/**
 * Every problem CloudFormation's resource specification finds in `template`: unknown resource types, unknown or
 * missing required properties at any depth, values of the wrong shape (intrinsic values are skipped), unknown
 * resource attributes, and Ref / GetAtt / Sub / DependsOn / condition names that point nowhere.
 */
function specProblems(db: SpecDatabase, template: CfnTemplate): string[] {
  const problems: string[] = [];
  const resourceSpec = (type: string) => db.lookup('resource', 'cloudFormationType', 'equals', type)[0] as unknown as SpecResource | undefined;
  const typeDefinition = (id: string) => db.get('typeDefinition', id) as unknown as { name: string; properties: SpecProperties };

  function checkObject(value: Record<string, unknown>, props: SpecProperties, path: string) {
    for (const [name, v] of Object.entries(value)) {
      const prop = props[name];
      if (!prop) problems.push(`${path}.${name}: no such property`);
      else checkValue(v, prop.type, `${path}.${name}`);
    }
    for (const [name, prop] of Object.entries(props)) {
      if (prop.required && !(name in value)) problems.push(`${path}.${name}: required property missing`);
    }
  }

  /** Problems of one value against one type (collected apart, so a union can try each member). */
  function valueProblems(value: unknown, type: SpecType, path: string): string[] {
    const saved = problems.length;
    checkValue(value, type, path);
    return problems.splice(saved);
  }

  function checkValue(value: unknown, type: SpecType, path: string): void {
    if (isIntrinsic(value)) return;
    switch (type.type) {
      case 'union': {
        const tries = type.types.map((t) => valueProblems(value, t, path));
        if (!tries.some((p) => p.length === 0)) problems.push(...tries.sort((a, b) => a.length - b.length)[0]);
        return;
      }
      case 'ref': {
        const def = typeDefinition(type.reference.$ref);
        if (!isObject(value)) problems.push(`${path}: ${def.name} expects an object, got ${JSON.stringify(value)}`);
        else checkObject(value, def.properties, path);
        return;
      }
      case 'array':
        if (!Array.isArray(value)) problems.push(`${path}: expects a list, got ${JSON.stringify(value)}`);
        else value.forEach((v, i) => checkValue(v, type.element, `${path}[${i}]`));
        return;
      case 'map':
        if (!isObject(value)) problems.push(`${path}: expects a map, got ${JSON.stringify(value)}`);
        else for (const [k, v] of Object.entries(value)) checkValue(v, type.element, `${path}.${k}`);
        return;
      case 'tag':
        if (!isObject(value) || !('Key' in value) || !('Value' in value)) problems.push(`${path}: expects a tag {Key, Value}`);
        return;
      case 'json':
      case 'null':
        return;
      case 'boolean':
        if (typeof value !== 'boolean' && value !== 'true' && value !== 'false') problems.push(`${path}: expects a boolean, got ${JSON.stringify(value)}`);
        return;
      case 'number':
      case 'integer':
        if (typeof value !== 'number' && !(typeof value === 'string' && value.trim() !== '' && Number.isFinite(Number(value)))) {
          problems.push(`${path}: expects a number, got ${JSON.stringify(value)}`);
        }
        return;
      default: // string, date-time: CloudFormation turns numbers and booleans into strings
        if (!['string', 'number', 'boolean'].includes(typeof value)) problems.push(`${path}: expects a string, got ${JSON.stringify(value)}`);
    }
  }

  const conditions = new Set(Object.keys(template.Conditions ?? {}));
  const parameters = new Set(Object.keys(isObject(template.Parameters) ? template.Parameters : {}));
  /**
   * A Ref/GetAtt target: it exists, has the attribute, and exists whenever the referring value does (a resource
   * with a condition may be referred to only under that same condition, e.g. in the true branch of an Fn::If).
   */
  const checkTarget = (logicalId: string, attribute: string | undefined, path: string, when: string | undefined) => {
    const target = template.Resources[logicalId];
    if (!target) {
      if (attribute === undefined && (parameters.has(logicalId) || logicalId.startsWith('AWS::'))) return;
      problems.push(`${path}: ${logicalId} is not a resource${attribute === undefined ? ' or parameter' : ''}`);
      return;
    }
    const spec = attribute === undefined ? undefined : resourceSpec(target.Type);
    if (spec && attribute !== undefined && !(attribute in spec.attributes)) problems.push(`${path}: ${target.Type} has no attribute ${attribute}`);
    if (target.Condition !== undefined && target.Condition !== when) problems.push(`${path}: ${logicalId} exists only when ${target.Condition}`);
  };
  const checkCondition = (name: unknown, path: string) => {
    if (typeof name !== 'string' || !conditions.has(name)) problems.push(`${path}: no condition ${JSON.stringify(name)}`);
  };
  /** Walks a value for Ref, GetAtt, Sub `${…}`, If and Condition names; `when` is the condition it exists under. */
  const checkReferences = (value: unknown, path: string, when: string | undefined): void => {
    if (Array.isArray(value)) return value.forEach((v, i) => checkReferences(v, `${path}[${i}]`, when));
    if (!isObject(value)) return;
    for (const [key, v] of Object.entries(value)) {
      if (key === 'Ref' && typeof v === 'string') checkTarget(v, undefined, path, when);
      else if (key === 'Fn::GetAtt') {
        const [id, ...attr] = Array.isArray(v) ? v : String(v).split('.');
        checkTarget(String(id), attr.join('.'), path, when);
      } else if (key === 'Fn::Sub') {
        const [text, vars] = Array.isArray(v) ? v : [v, {}];
        for (const [, name] of String(text).matchAll(/\$\{([^!}][^}]*)\}/g)) {
          if (isObject(vars) && name in vars) continue;
          const [id, ...attr] = name.split('.');
          checkTarget(id, attr.length ? attr.join('.') : undefined, path, when);
        }
      } else if (key === 'Fn::If' && Array.isArray(v)) {
        checkCondition(v[0], path);
        checkReferences(v[1], `${path}.Fn::If[1]`, String(v[0]));
        checkReferences(v[2], `${path}.Fn::If[2]`, when);
        continue;
      } else if (key === 'Condition' && typeof v === 'string') checkCondition(v, path);
      checkReferences(v, `${path}.${key}`, when);
    }
  };

  for (const [id, resource] of Object.entries(template.Resources)) {
    const path = `Resources.${id}`;
    for (const key of Object.keys(resource)) if (!RESOURCE_KEYS.has(key)) problems.push(`${path}.${key}: not a resource attribute`);
    for (const dep of [resource.DependsOn ?? []].flat()) if (!template.Resources[dep]) problems.push(`${path}.DependsOn: no resource ${dep}`);
    if (resource.Condition !== undefined) checkCondition(resource.Condition, path);
    const spec = resourceSpec(resource.Type);
    if (!spec) {
      problems.push(`${path}: no resource type ${resource.Type}`);
      continue;
    }
    checkObject(resource.Properties ?? {}, spec.properties, `${path}.Properties`);
    checkReferences(resource.Properties ?? {}, `${path}.Properties`, resource.Condition);
  }
  for (const [id, output] of Object.entries(template.Outputs ?? {})) {
    if (output.Condition !== undefined) checkCondition(output.Condition, `Outputs.${id}`);
    checkReferences(output.Value, `Outputs.${id}.Value`, output.Condition);
  }
  for (const [id, condition] of Object.entries(template.Conditions ?? {})) checkReferences(condition, `Conditions.${id}`, undefined);
  return problems;
}

/**
 * Evaluates what CloudFormation computes from literals (osls params become literals): Ref of a stack parameter
 * (its default), Fn::Select, Fn::Split,
 * Fn::Join, Fn::If (by its condition) and Fn::Sub with a variable map (its variables substituted, pseudo
 * parameters and resource attributes left as they are: `{ 'Fn::Sub': text }`). Anything else is returned as is.
 */
function evalValue(template: CfnTemplate, value: unknown): unknown {
  if (Array.isArray(value)) return value.map((v) => evalValue(template, v));
  if (!isIntrinsic(value)) return value;
  const [[fn, args]] = Object.entries(value as Record<string, any>);
  const str = (v: unknown): string => {
    const r = evalValue(template, v);
    if (typeof r !== 'string') throw new Error(`not a literal string: ${JSON.stringify(r)}`);
    return r;
  };
  switch (fn) {
    case 'Ref': {
      // A stack parameter takes its default (osls params become parameter defaults); anything else stays a Ref.
      const parameter = (template.Parameters as Record<string, { Default?: unknown }> | undefined)?.[args];
      return parameter && 'Default' in parameter ? parameter.Default : value;
    }
    case 'Fn::Select': {
      const list = evalValue(template, args[1]) as unknown[];
      const i = Number(args[0]);
      // CloudFormation fails the stack on an index out of range: so does this.
      if (!Array.isArray(list) || !(i >= 0 && i < list.length)) throw new Error(`Fn::Select ${i} out of range of ${JSON.stringify(list)}`);
      return list[i];
    }
    case 'Fn::Split':
      return str(args[1]).split(args[0]);
    case 'Fn::Join':
      return (evalValue(template, args[1]) as unknown[]).map(str).join(args[0]);
    case 'Fn::If':
      return evalValue(template, evalCondition(template, { Condition: args[0] }) ? args[1] : args[2]);
    case 'Fn::Sub': {
      if (!Array.isArray(args)) return value;
      const vars = Object.fromEntries(Object.entries(args[1] as Record<string, unknown>).map(([k, v]) => [k, str(v)]));
      return { 'Fn::Sub': String(args[0]).replace(/\$\{([^!}][^}]*)\}/g, (m, name: string) => (name in vars ? vars[name] : m)) };
    }
    default:
      return value;
  }
}

/** Evaluates a condition made of literals (what osls params turn into): Equals (of literals, Fn::Select, Fn::Split), Not, And, Or, Condition. */
function evalCondition(template: CfnTemplate, expr: unknown): boolean {
  if (!isObject(expr)) throw new Error(`not a condition: ${JSON.stringify(expr)}`);
  const [[fn, args]] = Object.entries(expr) as [[string, any]];
  switch (fn) {
    case 'Condition':
      return evalCondition(template, template.Conditions?.[args]);
    case 'Fn::Not':
      return !evalCondition(template, args[0]);
    case 'Fn::And':
      return args.every((a: unknown) => evalCondition(template, a));
    case 'Fn::Or':
      return args.some((a: unknown) => evalCondition(template, a));
    case 'Fn::Equals': {
      const [a, b] = args.map((v: unknown) => evalValue(template, v));
      if (typeof a !== 'string' || typeof b !== 'string') throw new Error(`not a literal comparison: ${JSON.stringify(args)}`);
      return a === b;
    }
    default:
      throw new Error(`condition function ${fn} not supported here`);
  }
}

/**
 * What a bundle loads from outside itself that is not a Node built-in: static imports, `import()` and
 * `require()` (esbuild keeps a require it cannot resolve inside a try block).
 */
function bundledOut(bundle: string): string[] {
  const found = [
    ...bundle.matchAll(/(?:^|[;}])\s*import\s*(?:[^;"'()]*?\bfrom\s*)?["']([^"']+)["']/g),
    ...bundle.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g),
    ...bundle.matchAll(/\brequire\(\s*["']([^"']+)["']\s*\)/g),
  ].map((m) => m[1]);
  return [...new Set(found.filter((s) => !isBuiltin(s)))].sort();
}
/**
 * The only outside modules the bundles may name: the SQLite adapter (a lazy `import()` run by the embedded
 * backend only, which Lambda never selects) and the SDK's optional SigV4a signers (multi-region access points,
 * not used).
 */
const NOT_BUNDLED = ['./store/sqlite-index.js', '@aws-sdk/signature-v4-crt', '@aws-sdk/signature-v4a'];

const kb = (n: number) => `${(n / 1024).toFixed(0)} KiB`;

let work: string;
let db: SpecDatabase;
let plain: Packaged;
let withOptions: Packaged;
let secured: Packaged;
let template: CfnTemplate;

const resources = (type: string, t: CfnTemplate = template) => Object.entries(t.Resources).filter(([, r]) => r.Type === type);
const fnLogicalId = (fn: FunctionName) => `${fn[0].toUpperCase()}${fn.slice(1)}LambdaFunction`;
const getAtt = (id: string, attr = 'Arn') => ({ 'Fn::GetAtt': [id, attr] });

beforeAll(async () => {
  work = scratchDir('sls-package-');
  const started = performance.now();
  [plain, withOptions, secured, db] = await Promise.all([
    oslsPackage(join(work, 'plain')),
    oslsPackage(join(work, 'options'), EVERY_OPTION),
    oslsPackage(join(work, 'secured'), SECURED),
    loadAwsServiceSpec(),
  ]);
  template = plain.template;
  const sizes = FUNCTIONS.map((fn) => {
    const { bytes, entries } = plain.zips[fn];
    const size = (suffix: string) => entries.find((e) => e.name === `functions/${fn}${suffix}`)?.size ?? 0;
    return `${fn}.zip ${kb(bytes)} (functions/${fn}.mjs ${kb(size('.mjs'))}, .map ${kb(size('.mjs.map'))})`;
  });
  console.log(
    `osls package ×3 in parallel: ${((performance.now() - started) / 1000).toFixed(1)} s ` +
      `(${plain.seconds.toFixed(1)} s, ${withOptions.seconds.toFixed(1)} s with every option, ${secured.seconds.toFixed(1)} s secured); ${sizes.join('; ')}`,
  );
}, 240_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('the CloudFormation template against the CloudFormation resource specification', () => {
  it('has only known resource types, known and required properties, and references that resolve', () => {
    expect(specProblems(db, plain.template)).toEqual([]);
    expect(specProblems(db, withOptions.template)).toEqual([]);
    expect(specProblems(db, secured.template)).toEqual([]);
  });

  it('(the validator reports misspelt, missing, misshapen, dangling and conditional-only references: an empty list means something)', () => {
    const bad: CfnTemplate = {
      Resources: {
        Fn: { Type: 'AWS::Lambda::Function', Properties: { Code: { ZipFile: 'x' }, Runtime: 'nodejs22.x', MemorySize: { size: 1 } } },
        Bucket: { Type: 'AWS::S3::Bucket', Properties: { BucketEncryption: { ServerSideEncryptionConfigurations: [] } } },
        Role: { Type: 'AWS::IAM::Role', Properties: { AssumeRolePolicyDocument: {}, Polices: [] }, DependsOn: 'Nothing' },
        Odd: { Type: 'AWS::No::Such', Properties: {} },
        Rule: { Type: 'AWS::Events::Rule', Condition: 'Missing', Properties: { Targets: [{ Id: 'a', Arn: getAtt('Role', 'Nope') }] } },
      },
      Conditions: { Maybe: { 'Fn::Equals': ['a', 'b'] } },
      Outputs: {
        Out: { Value: { 'Fn::Sub': '${Ghost.Arn}' } },
        Sometimes: { Value: { Ref: 'Rule' } },
        Guarded: { Value: { 'Fn::If': ['Maybe', { Ref: 'Fn' }, 'none'] } },
      },
    };
    bad.Resources.Fn.Condition = 'Maybe';
    expect(specProblems(db, bad)).toEqual(
      expect.arrayContaining([
        'Resources.Fn.Properties.Role: required property missing',
        expect.stringMatching(/^Resources\.Fn\.Properties\.MemorySize: expects a number/),
        'Resources.Bucket.Properties.BucketEncryption.ServerSideEncryptionConfigurations: no such property',
        'Resources.Bucket.Properties.BucketEncryption.ServerSideEncryptionConfiguration: required property missing',
        'Resources.Role.Properties.Polices: no such property',
        'Resources.Role.DependsOn: no resource Nothing',
        'Resources.Odd: no resource type AWS::No::Such',
        'Resources.Rule: no condition "Missing"',
        'Resources.Rule.Properties.Targets[0].Arn: AWS::IAM::Role has no attribute Nope',
        'Outputs.Out.Value: Ghost is not a resource',
        'Outputs.Sometimes.Value: Rule exists only when Missing',
      ]),
    );
    expect(specProblems(db, bad).filter((p) => p.startsWith('Outputs.Guarded'))).toEqual([]);
  });
});

describe('serverless.yml packaged with osls + serverless-esbuild', () => {
  it('routes ANY /v2/{proxy+}, ANY /v2/, GET /v2 and GET + POST /token of one HTTP API to the registry function (payload 2.0)', () => {
    expect(resources('AWS::ApiGatewayV2::Api')).toHaveLength(1);
    const integrations = resources('AWS::ApiGatewayV2::Integration');
    expect(integrations).toHaveLength(1);
    const [[integrationId, integration]] = integrations;
    expect(integration.Properties).toMatchObject({ IntegrationType: 'AWS_PROXY', PayloadFormatVersion: '2.0', IntegrationUri: getAtt('RegistryLambdaFunction') });
    const routes = resources('AWS::ApiGatewayV2::Route').map(([, r]) => r.Properties);
    expect(routes.map((r) => r.RouteKey).sort()).toEqual(['ANY /v2/', 'ANY /v2/{proxy+}', 'GET /token', 'GET /v2', 'POST /token']);
    for (const r of routes) expect(r.Target).toEqual({ 'Fn::Join': ['/', ['integrations', { Ref: integrationId }]] });
    const invokers = resources('AWS::Lambda::Permission').map(([, p]) => p.Properties).filter((p) => p.Principal === 'apigateway.amazonaws.com');
    expect(invokers.map((p) => p.FunctionName)).toEqual([getAtt('RegistryLambdaFunction')]);
  });

  it('runs the refresh and gc functions on EventBridge schedules of rate(1 day) each', () => {
    const rules = resources('AWS::Events::Rule').map(([, r]) => r.Properties);
    expect(rules).toHaveLength(2);
    for (const r of rules) expect(r).toMatchObject({ ScheduleExpression: 'rate(1 day)', State: 'ENABLED' });
    expect(rules.map((r) => r.Targets.map((t: { Arn: unknown }) => t.Arn))).toEqual([[getAtt('RefreshLambdaFunction')], [getAtt('GcLambdaFunction')]]);
    const permissions = resources('AWS::Lambda::Permission').map(([, p]) => p.Properties).filter((p) => p.Principal === 'events.amazonaws.com');
    expect(permissions.map((p) => p.FunctionName)).toEqual([getAtt('RefreshLambdaFunction'), getAtt('GcLambdaFunction')]);
  });

  it('declares the four functions: nodejs22.x on arm64, their handlers, timeouts, roles and environment', () => {
    const fns = resources('AWS::Lambda::Function');
    expect(fns.map(([id]) => id).sort()).toEqual(FUNCTIONS.map(fnLogicalId).sort());
    for (const [, fn] of fns) expect(fn.Properties).toMatchObject({ Runtime: 'nodejs22.x', Architectures: ['arm64'] });
    const props = (fn: FunctionName) => template.Resources[fnLogicalId(fn)].Properties;
    expect(props('registry')).toMatchObject({ Handler: 'functions/registry.handler', MemorySize: 1024, Timeout: 29, Role: getAtt('RegistryRole') });
    expect(props('fill')).toMatchObject({ Handler: 'functions/fill.handler', MemorySize: 1024, Timeout: 900, Role: getAtt('FillRole') });
    expect(props('refresh')).toMatchObject({ Handler: 'functions/refresh.handler', Timeout: 900, Role: getAtt('RefreshRole') });
    expect(props('gc')).toMatchObject({ Handler: 'functions/gc.handler', Timeout: 900, Role: getAtt('GcRole') });
    for (const fn of FUNCTIONS) {
      expect(props(fn).Code.S3Key).toMatch(new RegExp(`/${fn}\\.zip$`));
      expect(props(fn).Environment.Variables).toEqual({
        PULLTHROUGH_BACKEND: 'aws',
        PULLTHROUGH_TABLE: { Ref: 'Table' },
        PULLTHROUGH_BUCKET: { Ref: 'Bucket' },
        PULLTHROUGH_CONFIG: 'pullthrough.config.yml',
        PULLTHROUGH_LOG_LEVEL: 'INFO',
        PULLTHROUGH_URL_TTL_SECONDS: '900',
        // Client auth required (allowAnonymousClients defaults to false), no token key.
        PULLTHROUGH_REQUIRE_AUTH: 'true',
        PULLTHROUGH_TOKEN_KEY: '',
        // No --enable-source-maps (it costs every cold start): the logger maps logged errors (shared/stack-trace.ts).
        NODE_OPTIONS: '',
        // The registry (misses) and the refresh (the prefetch list) start fills; the fill function fills in process.
        ...(fn === 'registry' || fn === 'refresh' ? { PULLTHROUGH_FILL_FUNCTION: { Ref: 'FillLambdaFunction' } } : {}),
        // Tags move on a pull's re-check or on the refresh; the fill and the gc move none.
        ...(fn === 'registry' || fn === 'refresh' ? { PULLTHROUGH_EVENT_BUS: '' } : {}),
      });
    }
    // The fill is invoked asynchronously and not retried by Lambda (a failed fill releases its lease).
    const invokeConfigs = resources('AWS::Lambda::EventInvokeConfig').map(([, c]) => c.Properties);
    expect(invokeConfigs).toEqual([expect.objectContaining({ FunctionName: { Ref: 'FillLambdaFunction' }, MaximumRetryAttempts: 0 })]);
  });

  it('sets PULLTHROUGH_REQUIRE_AUTH (unless allowAnonymousClients) and PULLTHROUGH_TOKEN_KEY (tokenKey) in every function', () => {
    const env = (t: CfnTemplate) =>
      FUNCTIONS.map((fn) => {
        const vars = t.Resources[fnLogicalId(fn)].Properties.Environment.Variables;
        return [fn, vars.PULLTHROUGH_REQUIRE_AUTH, vars.PULLTHROUGH_TOKEN_KEY];
      });
    // The default deploy refuses auth.mode none (the shipped pullthrough.config.yml) at start-up.
    expect(env(plain.template)).toEqual(FUNCTIONS.map((fn) => [fn, 'true', '']));
    // allowAnonymousClients=true lifts it; the token key goes to fill and refresh too (the runtime wants it set
    // wherever auth is on, on Lambda), though only the registry may read it (below).
    expect(env(withOptions.template)).toEqual(FUNCTIONS.map((fn) => [fn, 'false', 'ssm:/pullthrough/token-key']));
    expect(env(secured.template)).toEqual(FUNCTIONS.map((fn) => [fn, 'true', 'secretsmanager:pullthrough-token-key']));
  });

  it('keeps each function log group 14 days', () => {
    const groups = resources('AWS::Logs::LogGroup').map(([, g]) => g.Properties);
    expect(groups.map((g) => g.LogGroupName).sort()).toEqual(FUNCTIONS.map((fn) => `/aws/lambda/pullthrough-ci-${fn}`).sort());
    for (const g of groups) expect(g.RetentionInDays).toBe(14);
  });

  it('declares the index table as the DynamoDB adapter defines it (keys, GSIs, on-demand), TTL on its lease attribute, PITR, SSE', () => {
    const tables = resources('AWS::DynamoDB::Table');
    expect(tables.map(([id]) => id)).toEqual(['Table']);
    const { GlobalSecondaryIndexes, ...keys } = tables[0][1].Properties;
    // What shared/store creates in tests and local setups is what the stack creates.
    const { GlobalSecondaryIndexes: adapterIndexes = [], ...adapterKeys } = TABLE_KEY_SCHEMA as typeof TABLE_KEY_SCHEMA & { GlobalSecondaryIndexes?: unknown[] };
    expect(GlobalSecondaryIndexes ?? []).toEqual(adapterIndexes);
    expect(keys).toEqual({
      ...adapterKeys,
      TimeToLiveSpecification: { AttributeName: TTL_ATTRIBUTE, Enabled: true },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
    });
    expect(keys).toMatchObject({
      BillingMode: 'PAY_PER_REQUEST',
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      TimeToLiveSpecification: { AttributeName: 'ttl', Enabled: true },
    });
  });

  it('declares the bucket private and encrypted, aborting incomplete multipart uploads after a day', () => {
    const bucket = template.Resources.Bucket;
    expect(bucket.Type).toBe('AWS::S3::Bucket');
    expect(bucket.Properties).toMatchObject({
      BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
      OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
    });
    expect(bucket.Properties.LifecycleConfiguration.Rules).toEqual([
      expect.objectContaining({ Status: 'Enabled', AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 } }),
    ]);
    expect(bucket.Properties).not.toHaveProperty('AccessControl');
  });

  it('denies every request to the bucket that does not use TLS', () => {
    const policies = resources('AWS::S3::BucketPolicy').filter(([, p]) => JSON.stringify(p.Properties.Bucket) === JSON.stringify({ Ref: 'Bucket' }));
    expect(policies).toHaveLength(1);
    expect(policies[0][1].Properties.PolicyDocument.Statement).toEqual([
      {
        Sid: 'DenyInsecureTransport',
        Effect: 'Deny',
        Principal: '*',
        Action: 's3:*',
        Resource: [getAtt('Bucket'), { 'Fn::Sub': '${Bucket.Arn}/*' }],
        Condition: { Bool: { 'aws:SecureTransport': 'false' } },
      },
    ]);
  });

  describe('gives each function its own least-privilege role', () => {
    interface Statement {
      Effect: string;
      Action: string[];
      Resource: unknown[];
    }
    /** The role's statements in effect in template `t`: an `Fn::If` statement counts only when its condition holds. */
    const statements = (fn: FunctionName, t: CfnTemplate = template): Statement[] => {
      const role = t.Resources[`${fn[0].toUpperCase()}${fn.slice(1)}Role`];
      expect(role.Type).toBe('AWS::IAM::Role');
      expect(role.Properties.AssumeRolePolicyDocument.Statement).toEqual([
        { Effect: 'Allow', Principal: { Service: 'lambda.amazonaws.com' }, Action: 'sts:AssumeRole' },
      ]);
      expect(role.Properties).not.toHaveProperty('ManagedPolicyArns');
      return role.Properties.Policies.flatMap((p: { PolicyDocument: { Statement: any[] } }) => p.PolicyDocument.Statement)
        .map((s: any) => (s['Fn::If'] ? (evalCondition(t, { Condition: s['Fn::If'][0] }) ? s['Fn::If'][1] : s['Fn::If'][2]) : s))
        .filter((s: any) => s.Ref !== 'AWS::NoValue')
        .map((s: any) => ({ Effect: s.Effect, Action: [s.Action].flat(), Resource: [s.Resource].flat() }));
    };
    /** The actions of `service` the role allows, each with its resources (CloudFormation functions of literals evaluated). */
    const allowed = (fn: FunctionName, service: string, t: CfnTemplate = template) =>
      statements(fn, t)
        .filter((s) => s.Effect === 'Allow')
        .flatMap((s) => s.Action.filter((a) => a.startsWith(`${service}:`)).map((a) => ({ action: a, resources: s.Resource.map((r) => evalValue(t, r)) })));
    const actions = (fn: FunctionName, service: string) => [...new Set(allowed(fn, service).map((a) => a.action))].sort();
    const TABLE = [getAtt('Table')];
    const BLOBS = { 'Fn::Sub': '${Bucket.Arn}/blobs/*' };
    const MANIFESTS = { 'Fn::Sub': '${Bucket.Arn}/manifests/*' };
    const ARN = 'arn:${AWS::Partition}';
    const HERE = '${AWS::Region}:${AWS::AccountId}';
    /** The upstream credential secrets every role may read. */
    const upstreamSecrets = (prefix: string) => [{ action: 'secretsmanager:GetSecretValue', resources: [{ 'Fn::Sub': `${ARN}:secretsmanager:${HERE}:secret:${prefix}*` }] }];
    const TEMPLATES = () => [plain.template, withOptions.template, secured.template];

    it('one role per function, no shared default role, only Allow statements without wildcard actions', () => {
      expect(template.Resources).not.toHaveProperty('IamRoleLambdaExecution');
      expect(resources('AWS::IAM::Role').map(([id]) => id).sort()).toEqual(['FillRole', 'GcRole', 'RefreshRole', 'RegistryRole']);
      for (const fn of FUNCTIONS) {
        for (const s of TEMPLATES().flatMap((t) => statements(fn, t))) {
          expect(s.Effect).toBe('Allow');
          for (const a of s.Action) expect(a, `${fn}: ${a}`).not.toMatch(/\*/);
          for (const r of s.Resource) expect(r, `${fn}: resource`).not.toBe('*');
        }
      }
    });

    it('each function writes only to its own log group', () => {
      for (const fn of FUNCTIONS) {
        expect(allowed(fn, 'logs')).toEqual([
          { action: 'logs:CreateLogStream', resources: [getAtt(`${fn[0].toUpperCase()}${fn.slice(1)}LogGroup`)] },
          { action: 'logs:PutLogEvents', resources: [getAtt(`${fn[0].toUpperCase()}${fn.slice(1)}LogGroup`)] },
        ]);
      }
    });

    it('registry: the table, reads of blobs (to presign), large manifests, and invoking the fill function only', () => {
      expect(actions('registry', 'dynamodb')).toEqual([
        'dynamodb:BatchWriteItem', 'dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query', 'dynamodb:UpdateItem',
      ]);
      for (const a of allowed('registry', 'dynamodb')) expect(a.resources).toEqual(TABLE);
      expect(allowed('registry', 's3')).toEqual([
        { action: 's3:GetObject', resources: [BLOBS] },
        { action: 's3:GetObject', resources: [MANIFESTS] },
        { action: 's3:PutObject', resources: [MANIFESTS] },
      ]);
      expect(allowed('registry', 'lambda')).toEqual([{ action: 'lambda:InvokeFunction', resources: [getAtt('FillLambdaFunction')] }]);
      // Upstream credentials; no token key without tokenKey.
      expect(allowed('registry', 'secretsmanager')).toEqual(upstreamSecrets('pullthrough/'));
      expect(allowed('registry', 'ssm')).toEqual([]);
      expect(allowed('registry', 'kms')).toEqual([]);
    });

    it('fill: blob records, links, leases and the stats counters; writes under blobs/ only; invokes nothing', () => {
      expect(actions('fill', 'dynamodb')).toEqual(['dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem']);
      for (const a of allowed('fill', 'dynamodb')) expect(a.resources).toEqual(TABLE);
      expect(actions('fill', 's3')).toEqual(['s3:AbortMultipartUpload', 's3:DeleteObject', 's3:PutObject']);
      for (const a of allowed('fill', 's3')) expect(a.resources).toEqual([BLOBS]);
      expect(allowed('fill', 'lambda')).toEqual([]);
      expect(allowed('fill', 'secretsmanager')).toEqual(upstreamSecrets('pullthrough/'));
    });

    it('refresh: the table and its indexes, large manifests; no blobs; invokes the fill function only (the prefetch list)', () => {
      expect(actions('refresh', 'dynamodb')).toEqual([
        'dynamodb:BatchWriteItem', 'dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query', 'dynamodb:UpdateItem',
      ]);
      for (const a of allowed('refresh', 'dynamodb')) expect(a.resources).toEqual([...TABLE, { 'Fn::Sub': '${Table.Arn}/index/*' }]);
      expect(actions('refresh', 's3')).toEqual(['s3:GetObject', 's3:PutObject']);
      for (const a of allowed('refresh', 's3')) expect(a.resources).toEqual([MANIFESTS]);
      expect(allowed('refresh', 'lambda')).toEqual([{ action: 'lambda:InvokeFunction', resources: [getAtt('FillLambdaFunction')] }]);
      expect(allowed('refresh', 'secretsmanager')).toEqual(upstreamSecrets('pullthrough/'));
    });

    it('gc: the table; lists blobs/ and manifests/, reads and deletes blob objects and large manifest bodies; no upstream secret, invokes nothing', () => {
      expect(actions('gc', 'dynamodb')).toEqual([
        'dynamodb:BatchWriteItem', 'dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query', 'dynamodb:Scan', 'dynamodb:UpdateItem',
      ]);
      for (const a of allowed('gc', 'dynamodb')) expect(a.resources).toEqual(TABLE);
      expect(allowed('gc', 's3')).toEqual([
        { action: 's3:ListBucket', resources: [getAtt('Bucket')] },
        { action: 's3:GetObject', resources: [BLOBS] },
        { action: 's3:DeleteObject', resources: [BLOBS] },
        { action: 's3:GetObject', resources: [MANIFESTS] },
        { action: 's3:DeleteObject', resources: [MANIFESTS] },
        { action: 's3:PutObject', resources: [MANIFESTS] },
      ]);
      const list = template.Resources.GcRole.Properties.Policies[0].PolicyDocument.Statement.find((st: any) => st.Sid === 'ListBlobs');
      expect(list.Condition).toEqual({ StringLike: { 's3:prefix': ['blobs/*', 'manifests/*'] } });
      for (const t of TEMPLATES()) {
        for (const service of ['lambda', 'secretsmanager', 'ssm', 'kms', 'events']) expect(allowed('gc', service, t)).toEqual([]);
      }
    });

    it('every role but gc may read the upstream credential secrets under upstreamSecretsPrefix (empty: none), and no other service', () => {
      const services = (fn: FunctionName, t: CfnTemplate) => [...new Set(statements(fn, t).flatMap((s) => s.Action.map((a) => a.split(':')[0])))].sort();
      for (const fn of FUNCTIONS.filter((f) => f !== 'gc')) {
        expect(allowed(fn, 'secretsmanager', withOptions.template).filter((a) => fn !== 'registry' || !JSON.stringify(a).includes('token-key'))).toEqual(
          upstreamSecrets('registry/upstreams/'),
        );
        expect(services(fn, plain.template)).toEqual(
          fn === 'registry' || fn === 'refresh' ? ['dynamodb', 'lambda', 'logs', 's3', 'secretsmanager'] : ['dynamodb', 'logs', 's3', 'secretsmanager'],
        );
      }
      expect(plain.template.Conditions?.HasUpstreamSecretsPrefix).toEqual({ 'Fn::Not': [{ 'Fn::Equals': ['pullthrough/', ''] }] });
      const noPrefix = { ...plain.template, Conditions: { ...plain.template.Conditions, HasUpstreamSecretsPrefix: { 'Fn::Not': [{ 'Fn::Equals': ['', ''] }] } } };
      for (const fn of FUNCTIONS) expect(allowed(fn, 'secretsmanager', noPrefix)).toEqual([]);
    });

    it('only the registry may read the token key: ssm:GetParameter on its parameter (kms:Decrypt with tokenKeyKmsKeyArn only), or secretsmanager:GetSecretValue on its secret', () => {
      // SSM, a name with a leading slash, a customer managed KMS key given.
      expect(allowed('registry', 'ssm', withOptions.template)).toEqual([
        { action: 'ssm:GetParameter', resources: [{ 'Fn::Sub': `${ARN}:ssm:${HERE}:parameter/pullthrough/token-key` }] },
      ]);
      expect(allowed('registry', 'kms', withOptions.template)).toEqual([{ action: 'kms:Decrypt', resources: [TOKEN_KEY_KMS_KEY] }]);
      const decrypt = withOptions.template.Resources.RegistryRole.Properties.Policies[0].PolicyDocument.Statement.map((st: any) => evalValue(withOptions.template, st))
        .find((st: any) => st.Sid === 'TokenKeyDecrypt');
      // Through SSM or Secrets Manager only, not a direct Decrypt of anything else the key encrypts.
      expect(decrypt.Condition).toEqual({ StringLike: { 'kms:ViaService': ['ssm.*.amazonaws.com', 'secretsmanager.*.amazonaws.com'] } });
      expect(allowed('registry', 'secretsmanager', withOptions.template)).toEqual(upstreamSecrets('registry/upstreams/'));
      // Secrets Manager by name: any ARN of that secret (the 6-character suffix Secrets Manager adds).
      expect(allowed('registry', 'secretsmanager', secured.template)).toEqual([
        ...upstreamSecrets('pullthrough/'),
        { action: 'secretsmanager:GetSecretValue', resources: [{ 'Fn::Sub': `${ARN}:secretsmanager:${HERE}:secret:pullthrough-token-key-??????` }] },
      ]);
      expect(allowed('registry', 'ssm', secured.template)).toEqual([]);
      expect(allowed('registry', 'kms', secured.template)).toEqual([]);
      for (const t of TEMPLATES()) {
        for (const fn of ['fill', 'refresh'] as const) {
          expect(allowed(fn, 'ssm', t)).toEqual([]);
          expect(allowed(fn, 'kms', t)).toEqual([]);
          expect(JSON.stringify(allowed(fn, 'secretsmanager', t))).not.toContain('token-key');
        }
      }

      // The other forms of tokenKey. osls puts the param's value into the template as a literal, so the template
      // of another value is this one with the literal replaced (checked first against the SSM package).
      const tokenKeyed = (value: string) =>
        JSON.parse(JSON.stringify(secured.template).replaceAll('secretsmanager:pullthrough-token-key', value)) as CfnTemplate;
      const tokenKeyParts = (t: CfnTemplate) => [
        Object.entries(t.Conditions ?? {}).filter(([id]) => id.startsWith('TokenKey')),
        t.Resources.RegistryRole.Properties.Policies[0].PolicyDocument.Statement.filter((st: any) => JSON.stringify(st).includes('TokenKey')),
      ];
      const kmsFree = (t: CfnTemplate) => tokenKeyParts(t).map((part) => part.filter((x: any) => !JSON.stringify(x).includes('TokenKeyDecrypt')));
      expect(kmsFree(tokenKeyed('ssm:/pullthrough/token-key'))).toEqual(kmsFree(withOptions.template));
      const grants = (value: string) => {
        const t = tokenKeyed(value);
        return [...allowed('registry', 'ssm', t), ...allowed('registry', 'secretsmanager', t).filter((a) => !JSON.stringify(a).includes('secret:pullthrough/*'))];
      };
      expect(grants('ssm:token-key')).toEqual([{ action: 'ssm:GetParameter', resources: [{ 'Fn::Sub': `${ARN}:ssm:${HERE}:parameter/token-key` }] }]);
      // A version selector is not part of the parameter's ARN.
      expect(grants('ssm:/pt/key:3')).toEqual([{ action: 'ssm:GetParameter', resources: [{ 'Fn::Sub': `${ARN}:ssm:${HERE}:parameter/pt/key` }] }]);
      expect(grants('ssm:arn:aws:ssm:eu-west-1:111122223333:parameter/pt/key')).toEqual([
        { action: 'ssm:GetParameter', resources: ['arn:aws:ssm:eu-west-1:111122223333:parameter/pt/key'] },
      ]);
      expect(grants('secretsmanager:arn:aws:secretsmanager:eu-west-1:111122223333:secret:pt/key-AbCdEf')).toEqual([
        { action: 'secretsmanager:GetSecretValue', resources: ['arn:aws:secretsmanager:eu-west-1:111122223333:secret:pt/key-AbCdEf'] },
      ]);
      expect(grants('')).toEqual([]);
      // A value of another kind is refused by the functions at start-up (PULLTHROUGH_TOKEN_KEY): no grant either.
      expect(grants('vault:pt/key')).toEqual([]);
    });

    it('with an eventBus, registry and refresh may put events on that bus only; without one, nobody may', () => {
      const bus = { 'Fn::Sub': 'arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/platform-events' };
      for (const fn of FUNCTIONS) {
        expect(allowed(fn, 'events')).toEqual([]);
        const publishes = fn === 'registry' || fn === 'refresh';
        expect(allowed(fn, 'events', withOptions.template)).toEqual(publishes ? [{ action: 'events:PutEvents', resources: [bus] }] : []);
        const env = withOptions.template.Resources[fnLogicalId(fn)].Properties.Environment.Variables;
        expect(env.PULLTHROUGH_EVENT_BUS).toBe(publishes ? 'platform-events' : undefined);
      }
    });
  });

  it('adds the CloudWatch dashboard over the metrics the functions write, and the fill-failure, upstream-error-rate and 5xx alarms; they notify alarmTopicArn only when given', () => {
    const [[, dashboard], ...more] = resources('AWS::CloudWatch::Dashboard');
    expect(more).toEqual([]);
    expect(dashboard.Properties.DashboardName).toBe('pullthrough-ci'); // the stage packaged
    const body = String(dashboard.Properties.DashboardBody['Fn::Sub']);
    // The only substitutions: the region and the stack's own API and functions.
    expect([...new Set(body.match(/\$\{[^}]+\}/g))].sort()).toEqual(['${AWS::Region}', '${FillLambdaFunction}', '${GcLambdaFunction}', '${HttpApi}', '${RefreshLambdaFunction}', '${RegistryLambdaFunction}']);
    const widgets = (JSON.parse(body) as { widgets: Array<{ properties: { title: string; metrics: unknown[][] } }> }).widgets;
    expect(widgets.map((w) => w.properties.title)).toEqual([
      'Hit ratio per rule (%, manifests and blobs)', 'Requests by result', 'Upstream requests by result, and errors', 'Bytes served from the cache vs fetched from upstreams',
      'Blob fills: duration (s) and failures', 'Tag re-checks (refresh and pulls) by outcome', 'Client answers 4xx / 5xx (API Gateway)', 'Function errors',
      'Bytes stored per rule (each complete GC pass)',
    ]);
    // Every pullthrough metric the dashboard reads is one the EMF output writes.
    const read = [...body.matchAll(/MetricName=\\"(\w+)\\"/g)].map((m) => m[1]);
    for (const w of widgets) for (const m of w.properties.metrics) if (m[0] === 'pullthrough') read.push(String(m[1]));
    expect(read.length).toBeGreaterThan(8);
    expect(read.filter((n) => !(EMF_METRIC_NAMES as readonly string[]).includes(n))).toEqual([]);

    const alarms = Object.fromEntries(resources('AWS::CloudWatch::Alarm').map(([id, r]) => [id, r.Properties]));
    expect(Object.keys(alarms).sort()).toEqual(['FillFailuresAlarm', 'ServerErrorsAlarm', 'UpstreamErrorRateAlarm']);
    expect(alarms.FillFailuresAlarm).toMatchObject({ Namespace: 'pullthrough', MetricName: 'FillFailures', Dimensions: [{ Name: 'service', Value: 'pullthrough' }], Statistic: 'Sum', Threshold: 1 });
    expect(alarms.ServerErrorsAlarm).toMatchObject({ Namespace: 'AWS/ApiGateway', MetricName: '5xx', Dimensions: [{ Name: 'ApiId', Value: { Ref: 'HttpApi' } }] });
    const rate = alarms.UpstreamErrorRateAlarm;
    expect(rate.Metrics.map((m: { Id: string; Expression?: string; MetricStat?: { Metric: { MetricName: string } } }) => m.Expression ?? m.MetricStat?.Metric.MetricName)).toEqual([
      'IF(requests > 0, 100 * errors / requests, 0)', 'UpstreamErrors', 'UpstreamRequests',
    ]);
    for (const name of ['UpstreamErrors', 'UpstreamRequests', 'FillFailures']) expect(EMF_METRIC_NAMES).toContain(name);

    expect(evalCondition(plain.template, { Condition: 'HasAlarmTopic' })).toBe(false);
    expect(evalCondition(withOptions.template, { Condition: 'HasAlarmTopic' })).toBe(true);
    for (const t of [plain.template, withOptions.template]) {
      for (const [, alarm] of resources('AWS::CloudWatch::Alarm', t)) {
        for (const key of ['AlarmActions', 'OKActions']) {
          expect(alarm.Properties[key]).toEqual({ 'Fn::If': ['HasAlarmTopic', [{ Ref: 'AlarmTopicArn' }], { Ref: 'AWS::NoValue' }] });
          expect(evalValue(t, alarm.Properties[key])).toEqual(t === plain.template ? { Ref: 'AWS::NoValue' } : [ALARM_TOPIC]);
        }
      }
    }
  });

  it('adds the custom domain and its API mapping only when domainName is given, and outputs its DNS target', () => {
    const domainResources = (t: CfnTemplate) =>
      Object.entries(t.Resources)
        .filter(([, r]) => r.Condition === undefined || evalCondition(t, { Condition: r.Condition }))
        .filter(([, r]) => r.Type.startsWith('AWS::ApiGatewayV2::DomainName') || r.Type === 'AWS::ApiGatewayV2::ApiMapping')
        .map(([id]) => id);
    expect(domainResources(plain.template)).toEqual([]);
    expect(evalCondition(plain.template, { Condition: 'HasCustomDomain' })).toBe(false);

    const t = withOptions.template;
    expect(evalCondition(t, { Condition: 'HasCustomDomain' })).toBe(true);
    expect(domainResources(t).sort()).toEqual(['CustomDomain', 'CustomDomainMapping']);
    expect(t.Resources.CustomDomain.Properties).toEqual({
      DomainName: 'registry.example.com',
      DomainNameConfigurations: [
        { CertificateArn: 'arn:aws:acm:us-east-1:123456789012:certificate/abc', EndpointType: 'REGIONAL', SecurityPolicy: 'TLS_1_2' },
      ],
    });
    expect(t.Resources.CustomDomainMapping.Properties).toEqual({ ApiId: { Ref: 'HttpApi' }, DomainName: { Ref: 'CustomDomain' }, Stage: { Ref: 'HttpApiStage' } });
    expect(t.Resources.HttpApiStage.Properties.StageName).toBe('$default');
    expect(t.Outputs?.CustomDomainTarget).toMatchObject({ Condition: 'HasCustomDomain', Value: getAtt('CustomDomain', 'RegionalDomainName') });
    expect(t.Outputs?.CustomDomainHostedZoneId).toMatchObject({ Condition: 'HasCustomDomain', Value: getAtt('CustomDomain', 'RegionalHostedZoneId') });
    expect(t.Outputs?.RegistryEndpoint.Value).toEqual({ 'Fn::If': ['HasCustomDomain', 'https://registry.example.com', getAtt('HttpApi', 'ApiEndpoint')] });
    // Everything else is the same stack.
    const ids = (x: CfnTemplate) => Object.keys(x.Resources).sort();
    expect(ids(t)).toEqual(ids(plain.template));
  });

  it('zips each function alone: its ESM bundle (AWS SDK inside), source map and pullthrough.config.yml; no node_modules, no SQLite', () => {
    const config = readFileSync(join(ROOT, 'pullthrough.config.yml'));
    for (const fn of FUNCTIONS) {
      const { bytes, entries } = plain.zips[fn];
      expect(entries.map((e) => e.name).sort()).toEqual([`functions/${fn}.mjs`, `functions/${fn}.mjs.map`, 'pullthrough.config.yml']);
      expect(entries.find((e) => e.name === 'pullthrough.config.yml')!.read().equals(config)).toBe(true);
      const bundle = entries.find((e) => e.name === `functions/${fn}.mjs`)!.read().toString('utf8');
      // Nothing imported or required from outside the bundle but Node built-ins, except what never runs here.
      expect(bundledOut(bundle), fn).toEqual(NOT_BUNDLED);
      expect(bundle).not.toContain('better-sqlite3');
      expect(bytes).toBeLessThan(5 * 1024 * 1024);
      // The params change the template only: every variant packages the same files (the bundle tests below run
      // these zips with each variant's environment).
      const contents = (p: Packaged) => p.zips[fn].entries.map((e) => [e.name, createHash('sha256').update(e.read()).digest('hex')]);
      expect(contents(withOptions)).toEqual(contents(plain));
      expect(contents(secured)).toEqual(contents(plain));
    }
    // The packaged config is valid and carries the default rules.
    const unpacked = join(work, 'config-check.yml');
    writeFileSync(unpacked, config);
    const parsed = loadConfig(unpacked);
    expect(parsed.rules.map((r) => [r.prefix, r.upstream])).toEqual([
      ['docker-hub', 'https://registry-1.docker.io'],
      ['ghcr', 'https://ghcr.io'],
      ['quay', 'https://quay.io'],
      ['ecr-public', 'https://public.ecr.aws'],
      ['k8s', 'https://registry.k8s.io'],
    ]);
    expect(parsed.blobFill.waitSeconds).toBe(20);
  });

  describe('the bundles, loaded from their unzipped artifacts in plain Node (no node_modules anywhere above)', () => {
    /**
     * A DynamoDB stand-in on loopback for the refresh run: records each request's operation and body, and
     * answers Query with no items (nothing is due) and any other operation with an empty result.
     */
    let dynamo: Server;
    let dynamoUrl: string;
    const dynamoCalls: { op: string; body: Record<string, unknown> }[] = [];
    beforeAll(async () => {
      dynamo = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          const op = String(req.headers['x-amz-target'] ?? '').split('.').pop() ?? '';
          dynamoCalls.push({ op, body: JSON.parse(Buffer.concat(chunks).toString() || '{}') });
          res.writeHead(200, { 'content-type': 'application/x-amz-json-1.0' });
          res.end(JSON.stringify(op === 'Query' ? { Items: [], Count: 0, ScannedCount: 0 } : {}));
        });
      });
      await new Promise<void>((r) => dynamo.listen(0, '127.0.0.1', r));
      dynamoUrl = `http://127.0.0.1:${(dynamo.address() as AddressInfo).port}`;
    });
    afterAll(() => new Promise<void>((r) => (dynamo ? dynamo.close(() => r()) : r())));
    /** An S3 stand-in for the gc run: records each request and lists no objects. */
    let s3: Server;
    let s3Url: string;
    const s3Calls: string[] = [];
    beforeAll(async () => {
      s3 = createServer((req, res) => {
        s3Calls.push(`${req.method} ${req.url}`);
        res.writeHead(200, { 'content-type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>');
      });
      await new Promise<void>((r) => s3.listen(0, '127.0.0.1', r));
      s3Url = `http://127.0.0.1:${(s3.address() as AddressInfo).port}`;
    });
    afterAll(() => new Promise<void>((r) => (s3 ? s3.close(() => r()) : r())));

    /** Unzips `fn`'s artifact into a fresh task root and returns it. */
    const unzip = (fn: FunctionName, name: string = fn): string => {
      const task = unzipInto(plain.zips[fn].entries, join(work, 'lambda', name));
      for (let d = task; d !== dirname(d); d = dirname(d)) expect(existsSync(join(d, 'node_modules')), d).toBe(false);
      return task;
    };
    const NAMES: Record<string, string> = { Table: 'pullthrough-ci-Table-TEST', Bucket: 'pullthrough-ci-bucket-test', FillLambdaFunction: 'pullthrough-ci-fill' };
    /** The function's environment in template `t`, with Refs replaced by the names CloudFormation would give. */
    const environment = (fn: FunctionName, t: CfnTemplate): Record<string, string> => {
      const vars = t.Resources[fnLogicalId(fn)].Properties.Environment.Variables as Record<string, unknown>;
      return Object.fromEntries(Object.entries(vars).map(([k, v]) => [k, typeof v === 'string' ? v : NAMES[(v as { Ref: string }).Ref]]));
    };
    /**
     * Imports `fn`'s bundle in a child process with the task root as cwd, as Lambda does, and invokes its handler
     * with `event` (null: import only), with the function's environment of `opts.template` (default: the stack
     * deployed with every option, anonymous clients allowed among them). Every AWS endpoint points at a closed
     * loopback port unless `opts.endpoints` says otherwise, so nothing can leave the machine.
     */
    const invoke = async (
      fn: FunctionName,
      task: string,
      event: unknown,
      opts: { template?: CfnTemplate; endpoints?: Record<string, string> } = {},
    ): Promise<any> => {
      const t = opts.template ?? withOptions.template;
      const tag = `${fn}-${Math.random().toString(36).slice(2)}`;
      const eventFile = join(task, '..', `${tag}-event.json`);
      const resultFile = join(task, '..', `${tag}-result.json`);
      writeFileSync(eventFile, JSON.stringify(event ?? null));
      const timeout = t.Resources[fnLogicalId(fn)].Properties.Timeout * 1000;
      const script = `
        import { readFileSync, writeFileSync } from 'node:fs';
        const { handler } = await import(process.env.PT_BUNDLE);
        const started = Date.now();
        const context = { awsRequestId: 'test', functionName: 'pullthrough-ci-${fn}', functionVersion: '$LATEST', memoryLimitInMB: '1024',
          invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:pullthrough-ci-${fn}',
          getRemainingTimeInMillis: () => ${timeout} - (Date.now() - started) };
        const event = JSON.parse(readFileSync(process.env.PT_EVENT, 'utf8'));
        const result = event === null ? 'loaded' : await handler(event, context);
        writeFileSync(process.env.PT_RESULT, JSON.stringify(result));
        process.exit(0);
      `;
      try {
        await run(process.execPath, ['--input-type=module', '-e', script], {
          cwd: task,
          // Only what the function would see: its template environment, the runtime's function name, region and
          // task root.
          env: {
            PATH: process.env.PATH,
            ...environment(fn, t),
            ...DUMMY_AWS,
            AWS_LAMBDA_FUNCTION_NAME: `pullthrough-ci-${fn}`,
            AWS_ENDPOINT_URL: 'http://127.0.0.1:9',
            ...opts.endpoints,
            LAMBDA_TASK_ROOT: task,
            PT_BUNDLE: pathToFileURL(join(task, `functions/${fn}.mjs`)).href,
            PT_EVENT: eventFile,
            PT_RESULT: resultFile,
          },
          timeout: 30_000,
        });
      } catch (e) {
        const err = e as Error & { stdout?: string; stderr?: string };
        throw new Error(`the bundled ${fn} handler failed: ${err.message}\n--- stdout\n${err.stdout}\n--- stderr\n${err.stderr}`);
      }
      return JSON.parse(readFileSync(resultFile, 'utf8'));
    };
    const body = (res: { body: string; isBase64Encoded?: boolean }) => (res.isBase64Encoded === false ? res.body : Buffer.from(res.body, 'base64').toString());

    it('with the default params, all four refuse the shipped pullthrough.config.yml (auth.mode none) at start-up', async () => {
      const refusals = FUNCTIONS.map((fn) => expect(invoke(fn, unzip(fn, `${fn}-default-params`), null, { template: plain.template })).rejects.toThrow(
        /client auth is required here \(PULLTHROUGH_REQUIRE_AUTH=true\) but the config has auth\.mode: none/,
      ));
      await Promise.all(refusals);
    }, 30_000);

    it('with allowAnonymousClients=true, registry answers GET /v2/ with 200 and the API version header (no storage touched)', async () => {
      const event = buildHttpApiEvent({ method: 'GET', path: '/v2/', headers: { 'User-Agent': 'serverless-package-test' } });
      const res = await invoke('registry', unzip('registry'), event);
      expect(res.statusCode).toBe(200);
      expect(res.headers['Docker-Distribution-API-Version']).toBe('registry/2.0');
      expect(body(res)).toBe('{}');
    }, 30_000);

    it('registry reads the pullthrough.config.yml in its task root (a broken one stops it at start-up)', async () => {
      const task = unzip('registry', 'registry-bad-config');
      writeFileSync(join(task, 'pullthrough.config.yml'), 'rules: []\n');
      await expect(invoke('registry', task, null)).rejects.toThrow(/invalid pullthrough config/);
    }, 30_000);

    it('refresh runs a scheduled pass against its table, querying only indexes the table has; fill loads', async () => {
      const scheduled = {
        version: '0', id: 'test', 'detail-type': 'Scheduled Event', source: 'aws.events', account: '000000000000',
        time: new Date().toISOString(), region: 'us-east-1', resources: [], detail: {},
      };
      const [report, fillLoaded] = await Promise.all([
        invoke('refresh', unzip('refresh'), scheduled, { endpoints: { AWS_ENDPOINT_URL_DYNAMODB: dynamoUrl } }),
        invoke('fill', unzip('fill'), null),
      ]);
      expect(fillLoaded).toBe('loaded');
      expect(report).toMatchObject({ checked: 0, moved: 0, errors: 0, stoppedEarly: false });
      expect(dynamoCalls.length).toBeGreaterThan(0);
      const indexes = (template.Resources.Table.Properties.GlobalSecondaryIndexes ?? []).map((i: { IndexName: string }) => i.IndexName);
      for (const call of dynamoCalls) {
        expect(call.body.TableName).toBe(NAMES.Table);
        if (call.body.IndexName !== undefined) expect(indexes).toContain(call.body.IndexName);
      }
      // Each operation the refresh made is one its role allows.
      const refreshActions = new Set(
        template.Resources.RefreshRole.Properties.Policies[0].PolicyDocument.Statement.flatMap((st: any) => (st.Action ? [st.Action].flat() : [])),
      );
      for (const call of dynamoCalls) expect(refreshActions).toContain(`dynamodb:${call.op}`);
    }, 30_000);
    it('gc runs a scheduled pass against its (empty) table and bucket, with only operations its role allows', async () => {
      const scheduled = { 'detail-type': 'Scheduled Event', source: 'aws.events', detail: {} };
      const from = dynamoCalls.length;
      const report = await invoke('gc', unzip('gc'), scheduled, { endpoints: { AWS_ENDPOINT_URL_DYNAMODB: dynamoUrl, AWS_ENDPOINT_URL_S3: s3Url } });
      expect(report).toMatchObject({ dryRun: false, complete: true, evictedTags: 0, deletedManifests: 0, deletedBlobs: 0, storedBytes: 0, overBudget: [] });
      const gcActions = new Set(
        template.Resources.GcRole.Properties.Policies[0].PolicyDocument.Statement.flatMap((st: { Action: string | string[] }) => [st.Action].flat()),
      );
      const ops = dynamoCalls.slice(from);
      expect(ops.length).toBeGreaterThan(0);
      for (const call of ops) {
        expect(gcActions).toContain(`dynamodb:${call.op}`);
        expect(call.body.TableName).toBe(NAMES.Table);
      }
      // The sweeps: one listing of blobs/ and one of manifests/ (large manifest bodies) in the stack's bucket
      // (path-style on a custom endpoint), both prefixes the role's ListBucket condition names.
      expect(s3Calls).toEqual([
        `GET /${NAMES.Bucket}/?list-type=2&max-keys=1000&prefix=blobs%2F`,
        `GET /${NAMES.Bucket}/?list-type=2&max-keys=1000&prefix=manifests%2F`,
      ]);
      // `verify` by invocation: the same role suffices (it lists blobs/, then the repositories).
      const fromVerify = dynamoCalls.length;
      s3Calls.length = 0;
      const verified = await invoke('gc', unzip('gc'), { action: 'verify', repair: true }, { endpoints: { AWS_ENDPOINT_URL_DYNAMODB: dynamoUrl, AWS_ENDPOINT_URL_S3: s3Url } });
      expect(verified).toEqual({ checkedBlobs: 0, checkedBytes: 0, checkedManifests: 0, damagedBlobs: [], damagedManifests: [], repaired: true, complete: true });
      expect(s3Calls).toEqual([`GET /${NAMES.Bucket}/?list-type=2&max-keys=1000&prefix=blobs%2F`]);
      for (const call of dynamoCalls.slice(fromVerify)) expect(gcActions).toContain(`dynamodb:${call.op}`);
    }, 30_000);


    describe('in token mode with the signing key in Secrets Manager (the production deploy: client auth required)', () => {
      /** A Secrets Manager stand-in holding the token key set under the name the secured deploy gives. */
      let secrets: Server;
      let secretsUrl: string;
      const secretReads: string[] = [];
      const HOST = 'registry.example.com';
      const USER = { username: 'ci-bot', password: 'correct horse battery staple' };
      /** The task roots of the three functions, with a token-mode pullthrough.config.yml. */
      const tasks = {} as Record<FunctionName, string>;
      beforeAll(async () => {
        const keySet = JSON.stringify([await generateSigningJwk()]);
        secrets = createServer((req, res) => {
          const chunks: Buffer[] = [];
          req.on('data', (c: Buffer) => chunks.push(c));
          req.on('end', () => {
            const op = String(req.headers['x-amz-target'] ?? '');
            const { SecretId } = JSON.parse(Buffer.concat(chunks).toString() || '{}');
            secretReads.push(`${op} ${SecretId}`);
            const known = op === 'secretsmanager.GetSecretValue' && SecretId === 'pullthrough-token-key';
            res.writeHead(known ? 200 : 400, { 'content-type': 'application/x-amz-json-1.1' });
            res.end(
              JSON.stringify(
                known
                  ? { ARN: 'arn:aws:secretsmanager:us-east-1:000000000000:secret:pullthrough-token-key-AbCdEf', Name: SecretId, SecretString: keySet, VersionId: 'v1' }
                  : { __type: 'ResourceNotFoundException', message: 'no such secret' },
              ),
            );
          });
        });
        await new Promise<void>((r) => secrets.listen(0, '127.0.0.1', r));
        secretsUrl = `http://127.0.0.1:${(secrets.address() as AddressInfo).port}`;
        // The shipped config with the example auth block of its comments filled in (a user of every rule).
        const config = `${readFileSync(join(ROOT, 'pullthrough.config.yml'), 'utf8')}
auth:
  mode: token
  users:
    - username: ${USER.username}
      passwordHash: ${await hashPassword(USER.password)}
      prefixes: ['*']
`;
        for (const fn of FUNCTIONS) {
          tasks[fn] = unzip(fn, `${fn}-token-mode`);
          writeFileSync(join(tasks[fn], 'pullthrough.config.yml'), config);
        }
      });
      afterAll(() => new Promise<void>((r) => (secrets ? secrets.close(() => r()) : r())));
      const inSecured = (fn: FunctionName, event: unknown) =>
        invoke(fn, tasks[fn], event, { template: secured.template, endpoints: { AWS_ENDPOINT_URL_SECRETS_MANAGER: secretsUrl } });
      const request = (method: string, path: string, headers: Record<string, string> = {}, init: { rawQueryString?: string; body?: Buffer } = {}) =>
        buildHttpApiEvent({ method, path, headers: { Host: HOST, 'X-Forwarded-Proto': 'https', ...headers }, ...init });
      const basic = `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString('base64')}`;

      it('registry challenges, issues tokens on GET and POST /token (key read from the secret), and accepts them', async () => {
        const challenged = await inSecured('registry', request('GET', '/v2/'));
        expect(challenged.statusCode).toBe(401);
        expect(challenged.headers['WWW-Authenticate']).toBe(`Bearer realm="https://${HOST}/token",service="${HOST}"`);
        expect(secretReads).toEqual([]);

        const scope = `service=${HOST}&scope=repository:docker-hub/library/nginx:pull`;
        const [got, posted] = await Promise.all([
          inSecured('registry', request('GET', '/token', { Authorization: basic }, { rawQueryString: scope })),
          inSecured('registry', request('POST', '/token', { 'Content-Type': 'application/x-www-form-urlencoded' }, {
            body: Buffer.from(
              new URLSearchParams({ grant_type: 'password', username: USER.username, password: USER.password, service: HOST, scope: 'repository:ghcr/owner/image:pull', client_id: 'test' }).toString(),
            ),
          })),
        ]);
        for (const res of [got, posted]) expect(res.statusCode, body(res)).toBe(200);
        expect(secretReads).toEqual(['secretsmanager.GetSecretValue pullthrough-token-key', 'secretsmanager.GetSecretValue pullthrough-token-key']);
        const token = JSON.parse(body(got)).token as string;
        expect(JSON.parse(body(posted)).access_token).toMatch(/^ey/);

        const ok = await inSecured('registry', request('GET', '/v2/', { Authorization: `Bearer ${token}` }));
        expect(ok.statusCode).toBe(200);
        expect(secretReads).toHaveLength(3);
      }, 30_000);

      it('fill and refresh start in token mode without reading the key (their roles may not)', async () => {
        const before = secretReads.length;
        await expect(Promise.all([inSecured('fill', null), inSecured('refresh', null)])).resolves.toEqual(['loaded', 'loaded']);
        expect(secretReads).toHaveLength(before);
      }, 30_000);
    });
  });
});
