/**
 * The local server's metrics listener: `GET /metrics` answers the Prometheus text (shared/observe/prometheus.ts)
 * on its own port, `PULLTHROUGH_METRICS_PORT`, apart from the registry's, so the metrics are never exposed where
 * clients pull (and a scrape needs no registry credentials). Anything else is 404.
 */
import { createServer, type Server } from 'node:http';
import type { Log } from '../shared/observe/log.js';
import type { PrometheusMetrics } from '../shared/observe/prometheus.js';

/** Starts the listener on `host`:`port` (0 picks a free port); resolves once listening. */
export function startMetricsListener(metrics: PrometheusMetrics, port: number, host: string, log: Log): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    metrics.text().then(
      (text) => {
        res.writeHead(200, { 'Content-Type': metrics.contentType, 'Content-Length': Buffer.byteLength(text) });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (err: unknown) => {
        log.error('metrics scrape failed', { error: err as Error });
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end('metrics unavailable\n');
      },
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
