// Keeps the layering of STYLE.md: the core speaks its own request/response types; the AWS SDK appears only in
// the AWS adapters and the composition root; middy and the aws-lambda types only in functions/ and the Lambda
// event adapter (and the local server, which builds the same events).
import tseslint from 'typescript-eslint';

const AWS = { group: ['@aws-sdk/*', '@smithy/*'], message: 'AWS SDK only in AWS adapters (shared/store/dynamodb-*, s3-*, shared/aws-secrets.ts, shared/auth/aws-*, login-password) and shared/runtime.ts' };
const LAMBDA = { group: ['@middy/*', 'aws-lambda'], message: 'middy and aws-lambda types only in functions/ and shared/http/lambda-event.ts' };

export default tseslint.config(
  { ignores: ['node_modules/**', '.serverless/**', '.esbuild/**', 'bench/results/**'] },
  {
    files: ['shared/**/*.ts'],
    languageOptions: { parser: tseslint.parser },
    rules: { 'no-restricted-imports': ['error', { patterns: [AWS, LAMBDA] }] },
  },
  {
    files: [
      'shared/runtime.ts',
      'shared/aws-secrets.ts',
      'shared/store/dynamodb-*.ts',
      'shared/store/s3-*.ts',
      'shared/auth/aws-*.ts',
      'shared/auth/login-password.ts',
    ],
    rules: { 'no-restricted-imports': ['error', { patterns: [LAMBDA] }] },
  },
  {
    files: ['shared/http/lambda-event.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: [AWS] }] },
  },
);
