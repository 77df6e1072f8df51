/**
 * Tag listing (OCI distribution spec, "Listing Tags") and the catalog. Tags come from the upstream when it
 * answers (so the list is the upstream's, not just what is cached), else from the tag index: during an outage the
 * list is the tags the cache holds now, each of them pullable, and a tag purged or evicted is gone from it at once.
 * (An upstream list kept from before the outage would name tags the cache cannot serve, and tags purged since.)
 */
import { RegistryError } from '../oci/errors.js';
import { noteCache } from '../observe/request-scope.js';
import { isValidTag } from '../oci/reference.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';

/** One page of a listing; `next` is the `last` value for the following page, when there is one. */
export interface Page {
  items: string[];
  next?: string;
}

/** Largest page of a listing (`n` above it is lowered; a `Link` leads on); the catalog's default page size too. */
export const MAX_PAGE = 1000;

/**
 * Parses the `n` query parameter (non-negative integer).
 * @throws RegistryError `UNSUPPORTED` (400) when it is not a number (distribution answers 400 too).
 */
export function parsePageSize(n: string | null): number | undefined {
  if (n === null || n === '') return undefined;
  if (!/^\d{1,9}$/.test(n)) throw new RegistryError('UNSUPPORTED', 'n must be a non-negative integer', { status: 400 });
  return Number(n);
}

/**
 * One page of a tag list as the spec's "Listing Tags" requires it, whatever the list came from (an upstream that
 * honours `n`/`last`, one that ignores them as Debian's distribution 2.8 does, one that answers unsorted, or the
 * list kept for an outage): valid tags only, once each, in lexical (byte) order — distribution's `sort.Strings`,
 * which the conformance suite accepts beside case-insensitive order, and the order `last` is compared in here
 * and upstream; only tags after `last` (non-inclusive); at most `n` (capped at {@link MAX_PAGE}; the whole list
 * when `n` is absent). `next` is set when more tags follow this page: beyond `n` here, or `upstreamNext` (the
 * upstream's own `Link` cursor), so a page shorter than `n` always comes with a `Link` unless it is the last.
 * (`n` = 0 never gets here: it answers an empty list without a `Link`.)
 */
function paginate(tags: string[], opts: { n?: number; last?: string }, upstreamNext?: string): Page {
  const sorted = [...new Set(tags.filter(isValidTag))].sort();
  const after = opts.last === undefined ? sorted : sorted.filter((t) => t > opts.last!);
  const n = opts.n === undefined ? after.length : Math.min(opts.n, MAX_PAGE);
  const items = after.slice(0, n);
  if (after.length > n) return { items, next: items[items.length - 1] };
  return { items, ...(upstreamNext === undefined ? {} : { next: upstreamNext }) };
}

/**
 * Lists tags of `name`: the upstream's page when reachable; when it is not (down, rate-limited, timing out), the
 * tags cached in the index (see the file header), or the upstream's error (503, 429) when none is. An upstream "no such repository"
 * is `NAME_UNKNOWN`. Every answer goes through {@link paginate}, so ordering, `n`, `last` and `next` hold whatever
 * the source did.
 */
export async function listTags(deps: RegistryDeps, name: string, opts: { n?: number; last?: string }): Promise<Page> {
  const resolved = deps.resolve(name);
  if (opts.n === 0) return { items: [] };
  if (opts.last !== undefined && opts.last.length > 256) throw new RegistryError('UNSUPPORTED', 'last is too long', { status: 400 });
  // Tag lists come from the upstream (`miss`: the cache cannot answer them alone), or the cached tags (`stale`).
  noteCache('miss');
  try {
    const asked = { ...opts, ...(opts.n === undefined ? {} : { n: Math.min(opts.n, MAX_PAGE) }) };
    const page = await deps.upstreamFor(resolved.rule).listTags(resolved.upstreamRepository, asked);
    return paginate(page.tags, opts, page.next?.last);
  } catch (err) {
    if (!(err instanceof UpstreamError)) throw err;
    if (err.failure === 'not-found' || err.failure === 'denied') throw toRegistryError(err, 'NAME_UNKNOWN');
    const cached = await deps.stores.tags.listTags(resolved.name, { n: 100_000 });
    if (cached.length === 0) throw toRegistryError(err, 'NAME_UNKNOWN');
    deps.log.warn('serving cached tag list', { name: resolved.name, reason: err.message });
    noteCache('stale');
    return paginate(cached, opts);
  }
}

/** Lists repositories the cache holds (canonical cache-side names). */
export async function listCatalog(deps: RegistryDeps, opts: { n?: number; last?: string }): Promise<Page> {
  if (opts.n === 0) return { items: [] };
  const n = Math.min(opts.n ?? MAX_PAGE, MAX_PAGE);
  // Repositories whose rule was removed from the config are still in the store but no longer served: skip them.
  const served = (name: string) => {
    try {
      return deps.resolve(name).name === name;
    } catch {
      return false;
    }
  };
  const found: string[] = [];
  let last = opts.last;
  for (let page = 0; page < 1000 && found.length <= n; page++) {
    const names = await deps.stores.tags.listRepositories({ last, n: n + 1 });
    found.push(...names.filter(served));
    if (names.length < n + 1) break;
    last = names[names.length - 1];
  }
  const items = found.slice(0, n);
  return { items, next: found.length > n ? items[items.length - 1] : undefined };
}
