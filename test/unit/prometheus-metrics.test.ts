/**
 * The Prometheus output of the metrics port (shared/observe/prometheus.ts) speaks the names issue 10 fixed, with
 * their labels, and the metrics listener serves it at /metrics only; PULLTHROUGH_METRICS_PORT is validated.
 */
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startMetricsListener } from '../../bin/metrics-listener.js';
import { readEnvironment } from '../../shared/config.js';
import { createPrometheusMetrics } from '../../shared/observe/prometheus.js';
import { silentLog } from '../support/harness.js';
import { parsePrometheusText, sumOf } from '../support/prometheus-text.js';

describe('Prometheus metrics', () => {
  it('counts each event under the issue\'s names and labels', async () => {
    const m = createPrometheusMetrics({ defaultMetrics: false, readStoredBytes: async () => ({ hub: 4096 }) });
    m.request({ rule: 'hub', kind: 'manifest', result: 'miss', servedBytes: 500 });
    m.request({ rule: 'hub', kind: 'blob', result: 'hit', servedBytes: 7000 });
    m.request({ rule: 'hub', kind: 'blob', result: 'hit', servedBytes: 3000 });
    m.request({ rule: '-', kind: 'catalog', result: 'hit', servedBytes: 0 });
    m.upstreamRequest({ rule: 'hub', kind: 'token', method: 'GET', status: 200 });
    m.upstreamRequest({ rule: 'hub', kind: 'manifest', method: 'HEAD', status: 'error' });
    m.upstreamBytes('hub', 1234);
    m.fill({ rule: 'hub', seconds: 0.7, ok: true });
    m.fill({ rule: 'hub', seconds: 3, ok: false });
    m.tagCheck({ rule: 'hub', result: 'moved' });
    m.verification({ rule: 'hub', result: 'refused' });
    m.verification({ rule: 'hub', result: 'refused' });
    m.verification({ rule: 'hub', result: 'verified' });
    const samples = parsePrometheusText(await m.text());
    expect(sumOf(samples, 'pullthrough_requests_total', { rule: 'hub', kind: 'blob', result: 'hit' })).toBe(2);
    expect(sumOf(samples, 'pullthrough_requests_total', { rule: '-', kind: 'catalog', result: 'hit' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_served_bytes_total', { rule: 'hub' })).toBe(10_500);
    expect(sumOf(samples, 'pullthrough_upstream_requests_total', { rule: 'hub', method: 'GET', status: '200', kind: 'token' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_upstream_requests_total', { rule: 'hub', method: 'HEAD', status: 'error' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_upstream_bytes_total', { rule: 'hub' })).toBe(1234);
    expect(sumOf(samples, 'pullthrough_fill_duration_seconds_count', { rule: 'hub' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_fill_duration_seconds_sum', { rule: 'hub' })).toBe(0.7);
    expect(sumOf(samples, 'pullthrough_fill_duration_seconds_bucket', { rule: 'hub', le: '1' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_fill_failures_total', { rule: 'hub' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_tag_checks_total', { rule: 'hub', result: 'moved' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_verifications_total', { rule: 'hub', result: 'refused' })).toBe(2);
    expect(sumOf(samples, 'pullthrough_verifications_total', { rule: 'hub', result: 'verified' })).toBe(1);
    expect(sumOf(samples, 'pullthrough_stored_bytes', { rule: 'hub' })).toBe(4096);
  });

  it('the listener serves /metrics (GET and HEAD) with the exposition content type, 404 elsewhere', async () => {
    const m = createPrometheusMetrics();
    m.request({ rule: 'r', kind: 'tags', result: 'miss', servedBytes: 0 });
    const server = await startMetricsListener(m, 0, '127.0.0.1', silentLog);
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const res = await fetch(`${base}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
      const samples = parsePrometheusText(await res.text());
      expect(sumOf(samples, 'pullthrough_requests_total', { rule: 'r', kind: 'tags', result: 'miss' })).toBe(1);
      expect(samples.some((s) => s.name === 'process_cpu_user_seconds_total')).toBe(true);
      expect((await fetch(`${base}/metrics`, { method: 'HEAD' })).status).toBe(200);
      expect((await fetch(`${base}/v2/`)).status).toBe(404);
      expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(404);
    } finally {
      server.close();
    }
  });

  it('PULLTHROUGH_METRICS_PORT: unset is off, a port number turns it on, anything else refuses to start', () => {
    expect(readEnvironment({}).metricsPort).toBeUndefined();
    expect(readEnvironment({ PULLTHROUGH_METRICS_PORT: '9464' })).toMatchObject({ metricsPort: 9464, metricsHost: '127.0.0.1' });
    expect(() => readEnvironment({ PULLTHROUGH_METRICS_PORT: 'metrics' })).toThrow('PULLTHROUGH_METRICS_PORT must be a port number');
  });

  it('PULLTHROUGH_ACCOUNTING: on by default, off turns the request accounting off, anything else refuses to start', () => {
    expect(readEnvironment({}).accounting).toBe(true);
    expect(readEnvironment({ PULLTHROUGH_ACCOUNTING: 'off' }).accounting).toBe(false);
    expect(() => readEnvironment({ PULLTHROUGH_ACCOUNTING: 'no' })).toThrow('PULLTHROUGH_ACCOUNTING must be on or off');
  });
});
