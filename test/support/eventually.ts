/**
 * Waiting in tests for something that happens in the background (a fill, a background re-check): polls `check`
 * every 10 ms until it holds, bounded by `ms` (default 10 s) so a regression fails instead of hanging.
 */

/** Resolves once `check` holds; rejects after `ms` milliseconds without it. */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  for (const deadline = Date.now() + ms; !(await check()); ) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
