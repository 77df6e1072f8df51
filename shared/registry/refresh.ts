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
import pRetry from 'p-retry';
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

  /**
   * One tag's re-check under its rule's concurrency cap, retrying 429s after their Retry-After. Never throws:
   * anything that is not a rate limit is recorded on the tag as an error (and the tag moves out of the due
   * range), so one bad tag cannot fail or stall every run.
   */
  async function checkOne(entry: TagRecord, deadline: number): Promise<TagCheck | undefined> {
    let resolved;
    try {
      resolved = deps.resolve(entry.name);
    } catch {
      // The tag's rule is gone from the config: it can no longer be re-checked; stop scheduling it.
      const now = deps.now();
      await deps.stores.tags.recordCheck(entry.name, entry.tag, { checkedAt: now, lastCheck: { at: now, result: 'error', error: 'no rule serves this name any more' } });
      return { result: 'error', oldDigest: entry.digest };
    }
    const rule = resolved.rule;
    return limitFor(rule.prefix, rule.refreshConcurrency)(async () => {
      if (Date.now() >= deadline) return undefined;
      try {
        return await pRetry(
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
            shouldRetry: ({ error }) => (error as { failure?: string }).failure === 'rate-limited',
            onFailedAttempt: async ({ error, retriesLeft }) => {
              if (retriesLeft <= 0 || (error as { failure?: string }).failure !== 'rate-limited') return;
              const wait = Math.min(retryAfterMs((error as { retryAfter?: string }).retryAfter) ?? 1000, settings.maxRetryAfterSeconds * 1000);
              if (Date.now() + wait >= deadline) throw error; // no time left to wait: give up on this tag
              deps.log.info('upstream rate limit: waiting Retry-After', { rule: rule.prefix, ms: wait });
              await new Promise((r) => setTimeout(r, wait));
            },
          },
        );
      } catch (err) {
        // Rate limit outlasting the retries or the run: the last check already recorded the 429 on the tag.
        if ((err as { failure?: string }).failure === 'rate-limited') return { result: 'error', oldDigest: entry.digest } satisfies TagCheck;
        deps.log.error('refresh of a tag failed', { name: entry.name, tag: entry.tag, reason: (err as Error).message });
        const now = deps.now();
        const dueAt = now + Math.max(rule.ttlSeconds, 3600) * 1000;
        await deps.stores.tags
          .recordCheck(entry.name, entry.tag, { checkedAt: now, dueAt, lastCheck: { at: now, result: 'error', error: (err as Error).message.slice(0, 200) } })
          .catch(() => undefined);
        return { result: 'error', oldDigest: entry.digest } satisfies TagCheck;
      }
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

  const refresher: Refresher = {
    async refreshDue(opts = {}) {
      const started = Date.now();
      const deadline = opts.deadline ?? started + settings.maxRunSeconds * 1000;
      const maxTags = opts.maxTags ?? Number.POSITIVE_INFINITY;
      const report = emptyReport();
      // Due as of the start of the run: a tag checked in this run gets dueAt ≥ cutoff (even with a TTL of 0), so
      // it is not listed again; `seen` also covers an index that lags (DynamoDB GSI reads are eventual).
      const cutoff = deps.now() - 1;
      const seen = new Set<string>();
      for (let batch = 0; batch < 1_000_000; batch++) {
        if (Date.now() >= deadline || report.checked >= maxTags) {
          report.stoppedEarly = (await deps.stores.tags.listDueTags(cutoff, 1)).length > 0;
          break;
        }
        const listed = await deps.stores.tags.listDueTags(cutoff, Math.min(settings.batchSize, maxTags - report.checked));
        const due = listed.filter((e) => !seen.has(`${e.name}\n${e.tag}`));
        if (due.length === 0) break; // nothing due, or only tags this run checked and the index still lists
        for (const e of due) seen.add(`${e.name}\n${e.tag}`);
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
      if (!target.name) return refresher.refreshDue({ deadline });
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
  return refresher;
}
