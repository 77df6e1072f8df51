/**
 * Per-rule freshness policy: how long a cached tag is served before the upstream is asked again.
 * - pinned tags (`pinnedTags`): never re-checked once cached;
 * - frequent tags (`frequentTags`): their own, usually shorter, TTL;
 * - every other tag: the rule's `ttlSeconds` (default 24 h, like ECR).
 */
import type { PullThroughCacheRule } from '../config.js';

const compiled = new WeakMap<PullThroughCacheRule, { pinned?: RegExp; frequent?: RegExp }>();

function patterns(rule: PullThroughCacheRule) {
  let p = compiled.get(rule);
  if (!p) {
    p = {
      pinned: rule.pinnedTags ? new RegExp(rule.pinnedTags) : undefined,
      frequent: rule.frequentTags ? new RegExp(rule.frequentTags.pattern) : undefined,
    };
    compiled.set(rule, p);
  }
  return p;
}

/** Seconds `tag` is fresh after a check, or `undefined` when it is never re-checked (pinned). */
export function tagTtlSeconds(rule: PullThroughCacheRule, tag: string): number | undefined {
  const p = patterns(rule);
  if (p.pinned?.test(tag)) return undefined;
  if (p.frequent?.test(tag)) return rule.frequentTags!.ttlSeconds;
  return rule.ttlSeconds;
}

/** When (ms) a tag checked at `checkedAt` (ms) is due for a re-check; `undefined` = never. */
export function dueAtFor(rule: PullThroughCacheRule, tag: string, checkedAt: number): number | undefined {
  const ttl = tagTtlSeconds(rule, tag);
  return ttl === undefined ? undefined : checkedAt + ttl * 1000;
}

/** True when a tag checked at `checkedAt` may still be served without asking the upstream at `now` (ms). */
export function isFresh(rule: PullThroughCacheRule, tag: string, checkedAt: number, now: number): boolean {
  const due = dueAtFor(rule, tag, checkedAt);
  return due === undefined || now < due;
}
