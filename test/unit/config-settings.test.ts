/**
 * Reading the settings a start needs (shared/config.ts `loadSettings`, `parseConfig`): a config file without
 * `rules` keeps the built-in rules (so `auth` or `defaultRule` can be added on top of them), and every problem of
 * the environment and the config is reported at once (`StartupError`), the grace period against the signed-URL
 * lifetime among them.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { DEFAULT_RULES, loadSettings, parseConfig, StartupError } from '../../shared/config.js';
import { scratchDir } from '../support/scratch.js';

/** Writes `config` as YAML and returns its path. */
function configFile(config: unknown): string {
  const path = join(scratchDir('settings-'), 'config.yml');
  writeFileSync(path, typeof config === 'string' ? config : stringify(config));
  return path;
}

/** The StartupError `fn` throws. */
function startupError(fn: () => unknown): StartupError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StartupError);
    return err as StartupError;
  }
  throw new Error('expected a StartupError');
}

describe('a config without rules', () => {
  it('keeps the built-in rules, with defaultRule and auth on top', () => {
    const config = parseConfig({
      defaultRule: 'docker-hub',
      auth: { mode: 'token', users: [{ username: 'ci', passwordHash: 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g', prefixes: ['ghcr'] }] },
    });
    expect(config.rules.map((r) => [r.prefix, r.upstream, r.ttlSeconds])).toEqual(DEFAULT_RULES.map((r) => [r.prefix, r.upstream, 86_400]));
    expect(config.defaultRule).toBe('docker-hub');
    expect(config.auth.users.map((u) => u.prefixes)).toEqual([['ghcr']]);
  });

  it('a defaultRule naming no built-in rule is still refused, by name', () => {
    expect(() => parseConfig({ defaultRule: 'hub' })).toThrow('defaultRule must be the prefix of a rule: "hub" is none');
  });

  it('an empty rules list is refused (it would serve nothing)', () => {
    expect(() => parseConfig({ rules: [] })).toThrow(/Too small: expected array to have >=1 items\n\s+→ at rules/);
  });

  it('the same from a file: only auth in it', () => {
    const { config } = loadSettings({ PULLTHROUGH_CONFIG: configFile('auth:\n  mode: none\n') });
    expect(config.rules.map((r) => r.prefix)).toEqual(['docker-hub', 'ghcr', 'quay', 'ecr-public', 'k8s']);
  });
});

describe('every problem at once', () => {
  it('two bad variables: both, one per line', () => {
    const err = startupError(() => loadSettings({ PULLTHROUGH_PORT: 'abc', PULLTHROUGH_LOG_LEVEL: 'loud' }));
    expect(err.environment).toEqual([
      'PULLTHROUGH_PORT must be a port number (0-65535), got "abc"',
      'PULLTHROUGH_LOG_LEVEL must be one of DEBUG, INFO, WARN, ERROR, SILENT, got "loud"',
    ]);
    expect(err.config).toBeUndefined();
    expect(err.message).toBe(`invalid environment:\n✖ ${err.environment[0]}\n✖ ${err.environment[1]}`);
  });

  it('one bad variable: that one line', () => {
    expect(startupError(() => loadSettings({ PULLTHROUGH_ACCOUNTING: 'no' })).message).toBe('PULLTHROUGH_ACCOUNTING must be on or off, got "no"');
  });

  it('a typo\'d key and a grace period under twice the URL lifetime, with a bad variable', () => {
    const path = configFile({ rules: [{ prefix: 'p', upstream: 'https://r.example' }], defualtRule: 'p', lifecycle: { graceSeconds: 100 } });
    const err = startupError(() => loadSettings({ PULLTHROUGH_CONFIG: path, PULLTHROUGH_URL_TTL_SECONDS: '600', PULLTHROUGH_BACKEND: 'cloud' }));
    expect(err.environment).toEqual(['PULLTHROUGH_BACKEND must be embedded or aws, got cloud']);
    expect(err.config).toBe(
      'invalid pullthrough config:\n✖ Unrecognized key: "defualtRule"\n' +
        '✖ graceSeconds (100) must be at least twice PULLTHROUGH_URL_TTL_SECONDS (600): 1200 or more\n  → at lifecycle.graceSeconds',
    );
  });

  it('a grace period of exactly twice the URL lifetime starts', () => {
    const path = configFile({ lifecycle: { graceSeconds: 1200 } });
    expect(loadSettings({ PULLTHROUGH_CONFIG: path, PULLTHROUGH_URL_TTL_SECONDS: '600' }).config.lifecycle.graceSeconds).toBe(1200);
  });

  it('the metrics port equal to the server port: they must differ (port 0 twice picks two free ports)', () => {
    expect(startupError(() => loadSettings({ PULLTHROUGH_PORT: '5000', PULLTHROUGH_METRICS_PORT: '5000' })).message).toBe(
      'PULLTHROUGH_METRICS_PORT must differ from PULLTHROUGH_PORT (both 5000): the Prometheus listener needs a port of its own',
    );
    expect(startupError(() => loadSettings({ PULLTHROUGH_METRICS_PORT: '5000' })).environment).toHaveLength(1);
    expect(loadSettings({ PULLTHROUGH_PORT: '0', PULLTHROUGH_METRICS_PORT: '0' }).env).toMatchObject({ port: 0, metricsPort: 0 });
  });
});
