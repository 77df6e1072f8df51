/**
 * The scheduled pass (the refresh function on its EventBridge schedule; `npx pullthrough refresh` with no
 * argument): every due tag re-checked (refresh.ts), then the config's `prefetch:` list prefetched (prefetch.ts),
 * which costs nothing for images still cached and refills what the lifecycle evicted. Both stop at the deadline;
 * what is left waits for the next run. A failed prefetch is logged and counted, never fails the pass.
 */
import type { RegistryConfig } from '../config.js';
import type { Log } from '../observe/log.js';
import type { BlobService } from './blobs.js';
import type { ManifestService } from './manifests.js';
import { parseImageRef, prefetchImage } from './prefetch.js';
import type { RefreshReport, Refresher } from './refresh.js';

/** What a scheduled pass did: the refresh report, and the prefetch list's outcome. Bytes. */
export interface ScheduledReport extends RefreshReport {
  prefetch: { images: number; failed: number; fetchedBytes: number };
}

/** Runs one pass until `deadline` (ms epoch). */
export async function runScheduledPass(
  deps: { refresher: Refresher; manifests: ManifestService; blobs: BlobService; config: Pick<RegistryConfig, 'prefetch'>; logger: Log },
  opts: { deadline?: number } = {},
): Promise<ScheduledReport> {
  const refreshed = await deps.refresher.refreshDue({ deadline: opts.deadline });
  const prefetch = { images: 0, failed: 0, fetchedBytes: 0 };
  for (const entry of deps.config.prefetch) {
    if (opts.deadline !== undefined && Date.now() >= opts.deadline) {
      deps.logger.warn('prefetch list not finished before the deadline; the next pass goes on', { left: deps.config.prefetch.length - prefetch.images - prefetch.failed });
      break;
    }
    try {
      const result = await prefetchImage(deps, parseImageRef(entry.image), { platforms: entry.platforms });
      prefetch.images++;
      prefetch.fetchedBytes += result.fetchedBytes;
      if (result.fetchedBytes > 0) deps.logger.info('prefetched', { event: 'prefetch', image: result.image, blobs: result.blobs, cachedBlobs: result.cachedBlobs, fetchedBytes: result.fetchedBytes });
    } catch (err) {
      prefetch.failed++;
      deps.logger.warn('prefetch failed', { event: 'prefetch', image: entry.image, reason: (err as Error).message });
    }
  }
  return { ...refreshed, prefetch };
}
