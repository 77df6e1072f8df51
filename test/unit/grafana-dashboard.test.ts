/**
 * The Grafana dashboard in grafana/ reads only metrics the Prometheus output (shared/observe/prometheus.ts)
 * exports, with labels it has: a renamed metric or label would leave a panel empty without anyone noticing.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createPrometheusMetrics } from '../../shared/observe/prometheus.js';
import { parsePrometheusText } from '../support/prometheus-text.js';

const ROOT = join(import.meta.dirname, '../..');

describe('grafana/pullthrough-dashboard.json', () => {
  it('every query names exported metrics and labels they carry', async () => {
    const m = createPrometheusMetrics({ readStoredBytes: async () => ({ hub: 1 }) });
    m.request({ rule: 'hub', kind: 'blob', result: 'hit', servedBytes: 1 });
    m.upstreamRequest({ rule: 'hub', kind: 'blob', method: 'GET', status: 200 });
    m.upstreamBytes('hub', 1);
    m.fill({ rule: 'hub', seconds: 1, ok: true });
    m.fill({ rule: 'hub', seconds: 1, ok: false });
    m.tagCheck({ rule: 'hub', result: 'moved' });
    const labelsOf = new Map<string, Set<string>>();
    for (const s of parsePrometheusText(await m.text())) {
      const set = labelsOf.get(s.name) ?? new Set<string>();
      for (const l of Object.keys(s.labels)) set.add(l);
      labelsOf.set(s.name, set);
    }
    const dashboard = JSON.parse(readFileSync(join(ROOT, 'grafana/pullthrough-dashboard.json'), 'utf8')) as { panels: Array<{ title: string; targets: Array<{ expr: string }> }> };
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(10);
    const used = new Set<string>();
    for (const p of dashboard.panels) {
      for (const t of p.targets) {
        for (const [, name, labels] of t.expr.matchAll(/\b((?:pullthrough|process)_[a-z_]+)(?:\{([^}]*)\})?/g)) {
          used.add(name);
          expect(labelsOf.has(name), `${p.title}: ${name}`).toBe(true);
          for (const [, label] of (labels ?? '').matchAll(/([a-z_]+)\s*=~?/g)) expect([...labelsOf.get(name)!], `${p.title}: ${name}{${label}}`).toContain(label);
        }
        for (const [, by] of t.expr.matchAll(/by \(([^)]*)\)/g)) for (const l of by.split(',').map((x) => x.trim())) expect(['rule', 'result', 'status', 'le', 'kind', 'method']).toContain(l);
      }
    }
    for (const name of ['pullthrough_requests_total', 'pullthrough_upstream_requests_total', 'pullthrough_upstream_bytes_total', 'pullthrough_served_bytes_total', 'pullthrough_fill_duration_seconds_bucket', 'pullthrough_stored_bytes']) {
      expect(used, name).toContain(name);
    }
  });
});
