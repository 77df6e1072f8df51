/**
 * The environment a test sets before importing a Lambda handler module (which builds its runtime at load): a
 * config with one rule `local` → `upstreamUrl`, a fresh data dir, logging off, plus `extra` variables.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Sets the variables in `process.env`; returns the temp dir. */
export function setLambdaTestEnv(upstreamUrl: string, extra: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'pt-lambda-'));
  writeFileSync(join(dir, 'config.yaml'), `rules:\n  - prefix: local\n    upstream: ${upstreamUrl}\n`);
  Object.assign(process.env, { PULLTHROUGH_CONFIG: join(dir, 'config.yaml'), PULLTHROUGH_DATA_DIR: join(dir, 'data'), PULLTHROUGH_LOG_LEVEL: 'SILENT', ...extra });
  return dir;
}
