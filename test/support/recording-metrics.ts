/**
 * A {@link Metrics} sink that records every event, for tests that assert what the core counted.
 */
import type { Metrics } from '../../shared/observe/metrics.js';

type Events = { [K in keyof Metrics]: Array<Parameters<Metrics[K]>> };

/** Records events; `count(kind, match)` counts the recorded requests/upstream requests matching `match`. */
export function recordingMetrics() {
  const events: Events = { request: [], upstreamRequest: [], upstreamBytes: [], fill: [], tagCheck: [], verification: [], storedBytes: [] };
  const record = <K extends keyof Metrics>(k: K) => ((...args: Parameters<Metrics[K]>) => void events[k].push(args)) as Metrics[K];
  const metrics: Metrics = {
    request: record('request'),
    upstreamRequest: record('upstreamRequest'),
    upstreamBytes: record('upstreamBytes'),
    fill: record('fill'),
    tagCheck: record('tagCheck'),
    verification: record('verification'),
    storedBytes: record('storedBytes'),
  };
  const matches = (e: object, m: object) => Object.entries(m).every(([k, v]) => (e as Record<string, unknown>)[k] === v);
  return {
    metrics,
    events,
    /** Requests recorded that match `m` (e.g. `{ kind: 'blob', result: 'hit' }`). */
    requests: (m: Partial<Parameters<Metrics['request']>[0]> = {}) => events.request.map(([e]) => e).filter((e) => matches(e, m)),
    /** Upstream requests recorded that match `m`. */
    upstream: (m: Partial<Parameters<Metrics['upstreamRequest']>[0]> = {}) => events.upstreamRequest.map(([e]) => e).filter((e) => matches(e, m)),
    /** Upstream body bytes recorded for `rule`. */
    upstreamBytes: (rule: string) => events.upstreamBytes.filter(([r]) => r === rule).reduce((a, [, b]) => a + b, 0),
    /** Served bytes recorded for `rule`. */
    servedBytes: (rule: string) => events.request.filter(([e]) => e.rule === rule).reduce((a, [e]) => a + e.servedBytes, 0),
    reset() {
      for (const list of Object.values(events)) list.length = 0;
    },
  };
}
