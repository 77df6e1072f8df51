/**
 * cfn-lint (AWS's CloudFormation linter, 1.x, which knows the current resource specification and service rules)
 * over the packaged template, with the default params and with every optional param set, configured by the
 * repository's .cfnlintrc.yaml: each waiver there, and each resource-level waiver in serverless.yml, says why it
 * is one. Every other finding fails the test.
 */
import { writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCommand } from '../support/child-processes.js';
import { scratchDir } from '../support/scratch.js';
import { EVERY_OPTION, oslsPackage, ROOT } from '../support/serverless-package.js';

interface Finding {
  Filename: string;
  Rule: { Id: string };
  Message: string;
  Location: { Path: (string | number)[] };
}

/** Findings by template name, as `<rule> <path>: <message>` lines. */
let findings: Record<string, string[]>;

/** Runs cfn-lint once over `templates` (written to files named after the keys); returns the findings of each. */
async function lint(templates: Record<string, unknown>): Promise<Record<string, string[]>> {
  const work = scratchDir('cfn-lint-');
  const files = Object.entries(templates).map(([name, t]) => {
    writeFileSync(join(work, `${name}.json`), JSON.stringify(t, null, 2));
    return join(work, `${name}.json`);
  });
  const r = await runCommand('cfn-lint', ['--config-file', join(ROOT, '.cfnlintrc.yaml'), '--format', 'json', ...files], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME },
    timeoutMs: 60_000,
  });
  if (r.timedOut || !r.stdout.trim().startsWith('[')) throw new Error(`cfn-lint did not report (code ${r.code}):\n${r.stderr}${r.stdout}`);
  const out: Record<string, string[]> = Object.fromEntries(Object.keys(templates).map((name) => [name, []]));
  for (const f of JSON.parse(r.stdout) as Finding[]) out[basename(f.Filename, '.json')].push(`${f.Rule.Id} ${f.Location.Path.join('/')}: ${f.Message}`);
  return out;
}

beforeAll(async () => {
  const work = scratchDir('cfn-lint-package-');
  const [defaults, everyOption] = await Promise.all([oslsPackage(join(work, 'defaults')), oslsPackage(join(work, 'every-option'), EVERY_OPTION)]);
  // A copy with a misspelt property and a resource-level waiver removed, to show the run reports what it finds.
  const broken = structuredClone(defaults.template);
  broken.Resources.Table.Properties.BilingMode = 'PAY_PER_REQUEST';
  delete broken.Resources.RegistryRole.Metadata;
  findings = await lint({ defaults: defaults.template, 'every-option': everyOption.template, broken });
}, 180_000);

describe('cfn-lint over the packaged template', () => {
  it('finds nothing with the default params', () => {
    expect(findings.defaults).toEqual([]);
  });

  it('finds nothing with every optional param set', () => {
    expect(findings['every-option']).toEqual([]);
  });

  it('(reports what it finds, waivers notwithstanding: an empty list above means something)', () => {
    expect(findings.broken).toEqual(
      expect.arrayContaining([expect.stringMatching(/^E3002 Resources\/Table\/Properties\/BilingMode: /), expect.stringMatching(/^E3510 Resources\/RegistryRole\//)]),
    );
  });
});
