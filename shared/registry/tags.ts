/**
 * Tag listing (OCI distribution spec, "Listing Tags") and the catalog. Tags come from the upstream when it
 * answers (so the list is the upstream's, not just what is cached), else from the tag index.
 */
import { RegistryError } from '../oci/errors.js';
import { UpstreamError, toRegistryError } from '../upstream/errors.js';
import type { RegistryDeps } from './deps.js';

/** One page of a listing; `next` is the `last` value for the following page, when there is one. */
export interface Page {
  items: string[];
  next?: string;
}

/** Default and maximum page size for listings when the client asks for none or too many. */
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
 * Lists tags of `name`: the upstream's page when reachable (kept for offline use); when it is not, the last
 * page seen for the same query, else the cached tags.
 */
export async function listTags(deps: RegistryDeps, name: string, opts: { n?: number; last?: string }): Promise<Page> {
  const resolved = deps.resolve(name);
  if (opts.n === 0) return { items: [] };
  if (opts.last !== undefined && opts.last.length > 256) throw new RegistryError('UNSUPPORTED', 'last is too long', { status: 400 });
  const key = `tags?${new URLSearchParams({ n: String(opts.n ?? ''), last: opts.last ?? '' })}`;
  try {
    const page = await deps.upstreamFor(resolved.rule).listTags(resolved.upstreamRepository, opts);
    const result: Page = { items: page.tags, next: page.next?.last };
    await deps.stores.listings.putListing(resolved.name, key, JSON.stringify(result));
    return result;
  } catch (err) {
    if (!(err instanceof UpstreamError)) throw err;
    if (err.failure !== 'not-found') {
      const seen = await deps.stores.listings.getListing(resolved.name, key);
      if (seen) {
        deps.log.warn('serving the last tag list seen', { name: resolved.name, reason: err.message });
        return JSON.parse(seen.body) as Page;
      }
    }
    const n = Math.min(opts.n ?? MAX_PAGE, MAX_PAGE);
    const cached = await deps.stores.tags.listTags(resolved.name, { last: opts.last, n: n + 1 });
    if (cached.length === 0 && !opts.last) throw toRegistryError(err, 'NAME_UNKNOWN');
    deps.log.warn('serving cached tag list', { name: resolved.name, reason: err.message });
    const items = cached.slice(0, n);
    return { items, next: cached.length > n ? items[items.length - 1] : undefined };
  }
}

/** Lists repositories the cache holds (canonical cache-side names). */
export async function listCatalog(deps: RegistryDeps, opts: { n?: number; last?: string }): Promise<Page> {
  if (opts.n === 0) return { items: [] };
  const n = Math.min(opts.n ?? MAX_PAGE, MAX_PAGE);
  const names = await deps.stores.tags.listRepositories({ last: opts.last, n: n + 1 });
  const items = names.slice(0, n);
  return { items, next: names.length > n ? items[items.length - 1] : undefined };
}
