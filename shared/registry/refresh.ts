/**
 * The refresh: re-checks cached tags against their upstreams so a cached `:latest` is at most one period
 * behind even if nobody pulls it. One upstream manifest HEAD per tag (no GET unless the digest moved, so it
 * spends no Docker Hub pull quota on unchanged tags); bounded concurrency per rule; a 429 waits the upstream's
 * `Retry-After` (bounded) and retries; a run stops starting checks at its deadline.
 *
 * Resumable by construction: each check moves the tag's `dueAt` forward (success or failure), so a run that
 * stops half-way leaves exactly the unchecked tags due, and the next run (or the next batch) picks them up.
 */
import pLimit, { type LimitFunction } from 'p-limit';
import pRetry, { AbortError } from 'p-retry';
import type { RegistryConfig } from '../config.js';
import type { TagRecord } from '../store/ports.js';
import type { RegistryDeps } from './deps.js';
import type { ManifestService, TagCheck } from './manifests.js';

/** What a refresh did. Counts of tags; `ms` wall-clock milliseconds. */
export interface RefreshReport {
  checked: number;
  unchanged: number;
  moved: number;
  gone: number;
  errors: number;
  /** True when the run hit its deadline (or `maxTags`) with tags still due. */
  stoppedEarly: boolean;
  ms: number;
}

/** What to refresh: a tag, a repository, a rule prefix, or (empty) everything due. */
export interface RefreshTarget {
  /** A cache-side name (`<prefix>/<repository>`) or a rule prefix. */
  name?: string;
  tag?: string;
}

/** The refresh operations (the scheduled function, `npm run refresh`, and the forced-refresh invocation). */
export interface Refresher {
  /** One scheduled pass: every tag due now, in batches, until none is due or the deadline (ms epoch). */
  refreshDue(opts?: { deadline?: number; maxTags?: number }): Promise<RefreshReport>;
  /** Re-checks a tag, every cached tag of a repository, or of every repository under a rule prefix, now. */
  refreshTarget(target: RefreshTarget, opts?: { deadline?: number }): Promise<RefreshReport>;
}

/** Parses `Retry-After` (delta seconds or an HTTP date) into milliseconds; undefined when absent/garbled. */
export function retryAfterMs(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** Creates the refresher. */
export function createRefresher(deps: RegistryDeps, manifests: ManifestService, settings: RegistryConfig['refresh']): Refresher {
  const limits = new Map<string, LimitFunction>();
  const limitFor = (prefix: string, concurrency: number) => {
    let l = limits.get(prefix);
    if (!l) limits.set(prefix, (l = pLimit(concurrency)));
    return l;
  };

  /** One tag's re-check under its rule's concurrency cap, retrying 429s after their Retry-After. */
  async function checkOne(entry: TagRecord, deadline: number): Promise<TagCheck | undefined> {
    const resolved = deps.resolve(entry.name);
    return limitFor(resolved.rule.prefix, resolved.rule.refreshConcurrency)(async () => {
      if (Date.now() >= deadline) return undefined;
      return pRetry(
        async () => {
          const check = await manifests.checkTag(entry);
          if (check.result === 'error' && check.error?.failure === 'rate-limited') throw check.error;
          return check;
        },
        {
          retries: settings.rateLimitRetries,
          minTimeout: 0,
          maxTimeout: 0,
          randomize: false,
          onFailedAttempt: async ({ error, retriesLeft }) => {
            if (retriesLeft <= 0) return;
            const wait = Math.min(retryAfterMs((error as { retryAfter?: string }).retryAfter) ?? 1000, settings.maxRetryAfterSeconds * 1000);
            if (Date.now() + wait >= deadline) throw new AbortError(error as Error);
            deps.log.info('upstream rate limit: waiting Retry-After', { rule: resolved.rule.prefix, ms: wait });
            await new Promise((r) => setTimeout(r, wait));
          },
        },
      ).catch((err: unknown) => {
        // Retries exhausted (or no time left): the last check already recorded the 429 on the tag.
        if ((err as { failure?: string }).failure === 'rate-limited') return { result: 'error', oldDigest: entry.digest } satisfies TagCheck;
        throw err;
      });
    });
  }

  function tally(report: RefreshReport, check: TagCheck | undefined): void {
    if (!check) return;
    report.checked++;
    if (check.result === 'unchanged') report.unchanged++;
    else if (check.result === 'moved') report.moved++;
    else if (check.result === 'gone') report.gone++;
    else report.errors++;
  }

  async function run(entries: TagRecord[], report: RefreshReport, deadline: number): Promise<void> {
    const checks = await Promise.all(entries.map((e) => checkOne(e, deadline)));
    for (const c of checks) tally(report, c);
    if (checks.some((c) => c === undefined)) report.stoppedEarly = true;
  }

  const emptyReport = (): RefreshReport => ({ checked: 0, unchanged: 0, moved: 0, gone: 0, errors: 0, stoppedEarly: false, ms: 0 });

  return {
    async refreshDue(opts = {}) {
      const started = Date.now();
      const deadline = opts.deadline ?? started + settings.maxRunSeconds * 1000;
      const maxTags = opts.maxTags ?? Number.POSITIVE_INFINITY;
      const report = emptyReport();
      // Each batch moves every tag it checks out of the due range, so the loop ends; the bound guards a bug.
      for (let batch = 0; batch < 1_000_000; batch++) {
        if (Date.now() >= deadline || report.checked >= maxTags) {
          report.stoppedEarly = (await deps.stores.tags.listDueTags(deps.now(), 1)).length > 0;
          break;
        }
        const due = await deps.stores.tags.listDueTags(deps.now(), Math.min(settings.batchSize, maxTags - report.checked));
        if (due.length === 0) break;
        const before = report.checked;
        await run(due, report, deadline);
        if (report.checked === before) break; // nothing could run (deadline): stop instead of spinning
      }
      report.ms = Date.now() - started;
      deps.log.info('refresh pass done', { ...report });
      return report;
    },

    async refreshTarget(target, opts = {}) {
      const started = Date.now();
      const deadline = opts.deadline ?? started + settings.maxRunSeconds * 1000;
      const report = emptyReport();
      if (!target.name) return this.refreshDue({ deadline });
      const entries: TagRecord[] = [];
      const addRepository = async (name: string) => {
        let last: string | undefined;
        for (let page = 0; page < 100_000; page++) {
          const tags = await deps.stores.tags.listTags(name, { last, n: 1000 });
          for (const tag of tags) {
            const e = await deps.stores.tags.getTag(name, tag);
            if (e) entries.push(e);
          }
          if (tags.length < 1000) break;
          last = tags[tags.length - 1];
        }
      };
      if (target.tag) {
        const resolved = deps.resolve(target.name);
        const e = await deps.stores.tags.getTag(resolved.name, target.tag);
        if (e) entries.push(e);
      } else {
        let repos: string[] = [];
        let last: string | undefined;
        for (let page = 0; page < 100_000; page++) {
          const batch = await deps.stores.tags.listRepositories({ last, n: 1000 });
          repos.push(...batch);
          if (batch.length < 1000) break;
          last = batch[batch.length - 1];
        }
        const asPrefix = repos.filter((r) => r.startsWith(`${target.name}/`));
        let exact: string | undefined;
        try {
          exact = deps.resolve(target.name).name;
        } catch {
          exact = undefined; // a bare rule prefix is not a resolvable name
        }
        repos = [...new Set([...(exact && repos.includes(exact) ? [exact] : []), ...asPrefix])];
        for (const r of repos) await addRepository(r);
      }
      await run(entries, report, deadline);
      report.ms = Date.now() - started;
      deps.log.info('refresh done', { target, ...report });
      return report;
    },
  };
}
