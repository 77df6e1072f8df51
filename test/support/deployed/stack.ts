/**
 * Deploys a packaged stack (./serverless-package.ts) into moto the way `serverless deploy` does: the create-stack
 * template first (the deployment bucket), the zips uploaded to it under the keys the stack names, then the stack
 * itself as an update. moto's CloudFormation creates the table, bucket, roles, log groups, functions (with the
 * environment the template gives each, Refs resolved) and the schedule; it skips what it does not support (the
 * HTTP API resources, the bucket policy, `EventInvokeConfig`): those are read from the template by the HTTP API
 * front (./http-api-front.ts) and the Invoke stand-in (./invoke-standin.ts).
 *
 * Then each function's role is assumed through STS (the credentials its environment gets) and its inline policies
 * read back as deployed, for the IAM gate (./iam-gate.ts) to enforce.
 */
import { CloudFormationClient, CreateStackCommand, ListStackResourcesCommand, ListStacksCommand, UpdateStackCommand } from '@aws-sdk/client-cloudformation';
import { EventBridgeClient, ListTargetsByRuleCommand, DescribeRuleCommand } from '@aws-sdk/client-eventbridge';
import { GetRolePolicyCommand, IAMClient, ListRolePoliciesCommand } from '@aws-sdk/client-iam';
import { GetFunctionConfigurationCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { CfnTemplate, Packaged, ZipEntry } from '../serverless-package.js';
import type { PolicyDocument } from './iam-policy.js';
import { MOTO_REGION, type Moto } from './moto.js';

/** AWS credentials (temporary ones carry a session token). */
export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** One deployed function: what Lambda knows of it, the credentials of its role, and its code. */
export interface DeployedFunction {
  logicalId: string;
  name: string;
  arn: string;
  /** `<file without extension>.<export>`, as Lambda's Node.js runtime reads it. */
  handler: string;
  runtime: string;
  timeoutSeconds: number;
  memoryMb: number;
  /** The environment the template gives the function, as deployed (Refs resolved to physical names). */
  environment: Record<string, string>;
  roleArn: string;
  /** Temporary credentials of its role (STS AssumeRole), as Lambda hands a function its role's. */
  credentials: Credentials;
  /** The zip's entries (the function's own artifact from the package). */
  code: ZipEntry[];
  /** The inline policies of its role, as deployed. */
  policies: PolicyDocument[];
  /** Retries of a failed asynchronous invocation (`EventInvokeConfig.MaximumRetryAttempts`; Lambda's default 2). */
  asyncRetries: number;
}

/** A scheduled EventBridge rule and the functions it targets. */
export interface Schedule {
  ruleName: string;
  ruleArn: string;
  expression: string;
  targets: { functionName: string; input?: string }[];
}

/** The stack in moto. */
export interface DeployedStack {
  stackName: string;
  template: CfnTemplate;
  /** Physical id of each logical resource moto created. */
  physicalIds: Record<string, string>;
  /** By function name. */
  functions: Map<string, DeployedFunction>;
  schedules: Schedule[];
  /** SDK client settings for the harness's own calls, straight to moto. */
  clientConfig: { endpoint: string; region: string; credentials: Credentials };
}

const LOGICAL_FUNCTION = 'AWS::Lambda::Function';

/** `{'Version': '2012-10-17', 'Statement': [..., None]}` (Python's repr, see below) → the policy JSON. */
function policyFromPythonRepr(doc: string): PolicyDocument {
  const json = doc.replace(/'/g, '"').replace(/\bNone\b/g, 'null').replace(/\bTrue\b/g, 'true').replace(/\bFalse\b/g, 'false');
  const parsed = JSON.parse(json) as PolicyDocument;
  // An `Fn::If` → `AWS::NoValue` statement comes out as None: CloudFormation drops it.
  return { ...parsed, Statement: parsed.Statement.filter((s) => s !== null) };
}

/**
 * The inline policies of a role as moto's CloudFormation created them (Refs, GetAtts, Subs and Ifs resolved).
 * moto 5.2 keeps them as a Python dict and answers GetRolePolicy with its repr: read that back as JSON.
 */
async function rolePolicies(iam: IAMClient, roleName: string): Promise<PolicyDocument[]> {
  const { PolicyNames = [] } = await iam.send(new ListRolePoliciesCommand({ RoleName: roleName }));
  const docs: PolicyDocument[] = [];
  for (const PolicyName of PolicyNames) {
    const { PolicyDocument = '' } = await iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName }));
    const raw = decodeURIComponent(PolicyDocument);
    docs.push((raw.trimStart().startsWith('{"') ? JSON.parse(raw) : policyFromPythonRepr(raw)) as PolicyDocument);
  }
  return docs;
}

/** The stack's status in moto (its DescribeStacks fails on Outputs naming resources it skipped, ListStacks does not). */
async function stackStatus(cfn: CloudFormationClient, stackName: string): Promise<string | undefined> {
  const { StackSummaries = [] } = await cfn.send(new ListStacksCommand({}));
  return StackSummaries.find((s) => s.StackName === stackName)?.StackStatus;
}

/**
 * Deploys `packaged` into `moto` as stack `stackName` and assumes every function's role. Throws when a stack
 * operation does not complete.
 */
export async function deployStack(moto: Moto, packaged: Packaged, stackName = 'pullthrough-ci'): Promise<DeployedStack> {
  const root = { endpoint: moto.endpoint, region: MOTO_REGION, credentials: { accessKeyId: 'harness', secretAccessKey: 'harness' } };
  const cfn = new CloudFormationClient(root);
  const capabilities = ['CAPABILITY_IAM', 'CAPABILITY_NAMED_IAM'] as const;
  const listResources = async () => {
    const { StackResourceSummaries = [] } = await cfn.send(new ListStackResourcesCommand({ StackName: stackName }));
    return Object.fromEntries(StackResourceSummaries.filter((r) => r.LogicalResourceId).map((r) => [r.LogicalResourceId!, r.PhysicalResourceId ?? '']));
  };

  await cfn.send(new CreateStackCommand({ StackName: stackName, TemplateBody: JSON.stringify(packaged.createTemplate), Capabilities: [...capabilities] }));
  if ((await stackStatus(cfn, stackName)) !== 'CREATE_COMPLETE') throw new Error(`stack ${stackName}: create did not complete`);
  const deploymentBucket = (await listResources()).ServerlessDeploymentBucket;
  const s3 = new S3Client({ ...root, forcePathStyle: true });
  const template = packaged.template;
  const functionResources = Object.entries(template.Resources).filter(([, r]) => r.Type === LOGICAL_FUNCTION);
  for (const [id, fn] of functionResources) {
    const key = fn.Properties.Code.S3Key as string;
    if (!packaged.zips[basename(key, '.zip')]) throw new Error(`${id}: no zip in the package for ${key}`);
    await s3.send(new PutObjectCommand({ Bucket: deploymentBucket, Key: key, Body: readFileSync(join(packaged.out, basename(key))) }));
  }
  await cfn.send(new UpdateStackCommand({ StackName: stackName, TemplateBody: JSON.stringify(template), Capabilities: [...capabilities] }));
  const status = await stackStatus(cfn, stackName);
  if (status !== 'UPDATE_COMPLETE') throw new Error(`stack ${stackName}: update ended ${status}; see ${moto.logPath}`);
  const physicalIds = await listResources();

  const iam = new IAMClient(root);
  const lambda = new LambdaClient(root);
  const sts = new STSClient(root);
  const functions = new Map<string, DeployedFunction>();
  const policies = new Map<string, PolicyDocument[]>();
  for (const [logicalId, resource] of functionResources) {
    const c = await lambda.send(new GetFunctionConfigurationCommand({ FunctionName: physicalIds[logicalId] }));
    const roleName = c.Role!.split('/').pop()!;
    if (!policies.has(roleName)) policies.set(roleName, await rolePolicies(iam, roleName));
    const { Credentials } = await sts.send(new AssumeRoleCommand({ RoleArn: c.Role!, RoleSessionName: c.FunctionName! }));
    const invokeConfig = Object.values(template.Resources).find(
      (r) => r.Type === 'AWS::Lambda::EventInvokeConfig' && r.Properties.FunctionName?.Ref === logicalId,
    );
    const zipName = basename(resource.Properties.Code.S3Key as string, '.zip');
    functions.set(c.FunctionName!, {
      logicalId,
      name: c.FunctionName!,
      arn: c.FunctionArn!,
      handler: c.Handler!,
      runtime: c.Runtime!,
      timeoutSeconds: c.Timeout!,
      memoryMb: c.MemorySize!,
      environment: { ...c.Environment?.Variables },
      roleArn: c.Role!,
      credentials: { accessKeyId: Credentials!.AccessKeyId!, secretAccessKey: Credentials!.SecretAccessKey!, sessionToken: Credentials!.SessionToken! },
      code: packaged.zips[zipName].entries,
      policies: policies.get(roleName)!,
      asyncRetries: invokeConfig?.Properties.MaximumRetryAttempts ?? 2,
    });
  }

  const events = new EventBridgeClient(root);
  const schedules: Schedule[] = [];
  for (const [logicalId, resource] of Object.entries(template.Resources)) {
    if (resource.Type !== 'AWS::Events::Rule' || !resource.Properties.ScheduleExpression) continue;
    const rule = await events.send(new DescribeRuleCommand({ Name: physicalIds[logicalId] }));
    const { Targets = [] } = await events.send(new ListTargetsByRuleCommand({ Rule: rule.Name! }));
    const byArn = new Map([...functions.values()].map((f) => [f.arn, f.name]));
    schedules.push({
      ruleName: rule.Name!,
      ruleArn: rule.Arn!,
      expression: rule.ScheduleExpression!,
      targets: Targets.map((t) => ({ functionName: byArn.get(t.Arn!) ?? t.Arn!, ...(t.Input ? { input: t.Input } : {}) })),
    });
  }
  for (const c of [cfn, s3, iam, lambda, sts, events]) c.destroy();
  return { stackName, template, physicalIds, functions, schedules, clientConfig: root };
}
