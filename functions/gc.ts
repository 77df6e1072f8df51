/**
 * The lifecycle Lambda (garbage collection, budgets, purge, verify). Two ways in:
 * - its EventBridge schedule (`gcSchedule`, default `rate(1 day)`): one GC pass, stopping ~30 s before the
 *   Lambda's 15 minutes (or at `lifecycle.maxRunSeconds`); a pass that did not finish saved where it was, and
 *   the next run resumes it;
 * - a direct invocation (see README): `{"action":"gc","dryRun":true}` runs a pass (or reports what one would do),
 *   `{"action":"purge","target":"<name>[:<tag>|@<digest>] | <rule prefix>"}` purges,
 *   `{"action":"verify","repair":true}` re-hashes stored blobs and manifests (and drops damaged ones); it stops
 *   ~30 s before the Lambda's timeout with `complete: false`, and the next `verify` invocation goes on from there.
 * Returns the report (the same JSON as `npx pullthrough gc --json` / `purge --json` / `verify --json`).
 */
import middy from '@middy/core';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import type { Context } from 'aws-lambda';
import type { GcReport, PurgeReport, VerifyReport } from '../shared/registry/lifecycle/index.js';
import { getRuntime } from '../shared/runtime.js';
import { flushMetrics } from './flush-metrics.js';

const runtime = await getRuntime();

/** Milliseconds kept in hand before the Lambda's own timeout. */
const SAFETY_MS = 30_000;

/** What an invocation may ask for; a scheduled event (or `{}`) is a GC pass. */
export type GcEvent =
  | { action?: 'gc'; dryRun?: boolean; 'detail-type'?: string }
  | { action: 'purge'; target: string }
  | { action: 'verify'; repair?: boolean };

/** Entry point. A purge target that names nothing cached answers `repositories: 0`; a malformed one throws. */
export const handler = middy<GcEvent, GcReport | PurgeReport | VerifyReport, Error, Context>()
  .use(injectLambdaContext(runtime.logger, { resetKeys: true }))
  .use(flushMetrics(runtime.emf, runtime.stats))
  .handler(async (event, context) => {
    if (event.action === 'purge') {
      if (typeof event.target !== 'string' || event.target === '') throw new Error('purge needs a target: <name>[:<tag>|@<digest>] or a rule prefix');
      return runtime.lifecycle.purge(event.target);
    }
    const deadline = Date.now() + Math.max(1000, context.getRemainingTimeInMillis() - SAFETY_MS);
    if (event.action === 'verify') return runtime.lifecycle.verify({ repair: event.repair === true, deadline, resume: true });
    const report = await runtime.lifecycle.gc({ dryRun: event.dryRun === true, deadline });
    // A complete pass measured what each rule stores: the `StoredBytes` metric (dashboard, shared/observe/emf.ts).
    if (report.complete && !report.dryRun) for (const [rule, usage] of Object.entries(report.rules)) runtime.emf?.storedBytes(rule, usage.storedBytes);
    return report;
  });
