/**
 * `pullthrough login-password`: prints a password for auth mode `iam` (user `AWS`), made from your AWS
 * credentials (the SDK's default chain), like `aws ecr get-login-password`.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { DEFAULT_EXPIRES_SECONDS, MAX_EXPIRES_SECONDS } from '../../shared/auth/iam.js';
import { createLoginPassword } from '../../shared/auth/login-password.js';
import { readEnvironment } from '../../shared/config.js';

function expiresIn(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_EXPIRES_SECONDS) throw new InvalidArgumentError(`must be 1..${MAX_EXPIRES_SECONDS} seconds`);
  return n;
}

export function register(program: Command): void {
  program
    .command('login-password')
    .description('print an auth mode iam password from your AWS credentials')
    .option('--region <region>', "the cache's auth.iam.region (default: AWS_REGION, else us-east-1)")
    .option('--expires-in <seconds>', `password lifetime (default ${DEFAULT_EXPIRES_SECONDS}, at most ${MAX_EXPIRES_SECONDS})`, expiresIn)
    // Tests against an STS stand-in only (also PULLTHROUGH_STS_ENDPOINT).
    .option('--sts-endpoint <origin>', 'STS endpoint other than https://sts.<region>.amazonaws.com (tests)')
    .addHelpText('after', '\nexample: npx pullthrough login-password --region eu-west-1 | docker login -u AWS --password-stdin HOST')
    .action(async (opts: { region?: string; expiresIn?: number; stsEndpoint?: string }) => {
      const env = readEnvironment();
      // The region must be the cache's auth.iam.region (default us-east-1): the password names its STS endpoint.
      const region = opts.region ?? env.awsRegion ?? 'us-east-1';
      const endpoint = opts.stsEndpoint ?? env.stsEndpoint;
      process.stdout.write(`${await createLoginPassword({ region, expiresInSeconds: opts.expiresIn ?? DEFAULT_EXPIRES_SECONDS, endpoint })}\n`);
    });
}
