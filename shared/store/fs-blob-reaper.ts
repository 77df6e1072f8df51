/**
 * The filesystem blob store's {@link BlobReaper} (the garbage collector's view of blob storage). A committed blob
 * is `<root>/blobs/<algorithm>/<hex>`; unpublishing renames it to `<root>/trash/<algorithm>/<hex>` (atomic, so
 * `stat` says "missing" from that instant and the next pull refills it) and sets the file's mtime to the
 * unpublish time. The local server's blob route still serves a trashed file to a validly signed URL (one handed out
 * before), so removing the trash file only after the grace period (longer than the URL lifetime) never breaks a
 * pull in progress. A refill writes a new file under `blobs/`; the trash copy is removed independently.
 * There are no orphans here: the rename is the commit. `tmp/` leftovers of writers that died are removed at open
 * and by GC (`removeAbandonedWrites`, fs-temp-files.ts).
 */
import { createReadStream, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { parseDigest, type Digest } from '../oci/digest.js';
import { removeAbandonedTemps } from './fs-temp-files.js';
import type { BlobReaper, StoredBlob } from './ports.js';

const ALGORITHMS = ['sha256', 'sha512'] as const;

/** The reaper over the store at `root`; `pathOf` gives a committed blob's path. */
export function createFsBlobReaper(root: string, pathOf: (digest: Digest) => string): BlobReaper & { trashPathOf(digest: Digest): string } {
  const trashPathOf = (digest: Digest) => {
    const { algorithm, encoded } = parseDigest(digest)!;
    return join(root, 'trash', algorithm, encoded);
  };
  const statOf = async (path: string) => fs.stat(path).catch(() => undefined);
  const entry = async (digest: Digest, state: 'committed' | 'unpublished'): Promise<StoredBlob | undefined> => {
    const st = await statOf(state === 'committed' ? pathOf(digest) : trashPathOf(digest));
    return st && { digest, size: st.size, state, since: Math.round(st.mtimeMs) };
  };
  const names = async (dir: string) => (await fs.readdir(dir).catch(() => [] as string[]));

  return {
    trashPathOf,

    async *listStoredBlobs(after) {
      for (const algorithm of ALGORITHMS) {
        // One directory listing per algorithm (names only, ~70 bytes each), sorted, then stat'ed lazily.
        const committed = new Set(await names(join(root, 'blobs', algorithm)));
        const trashed = new Set(await names(join(root, 'trash', algorithm)));
        const all = [...new Set([...committed, ...trashed])].sort();
        for (const encoded of all) {
          const digest = `${algorithm}:${encoded}` as Digest;
          if (!parseDigest(digest) || (after !== undefined && digest <= after)) continue;
          if (committed.has(encoded)) {
            const e = await entry(digest, 'committed');
            if (e) yield e;
          }
          if (trashed.has(encoded)) {
            const e = await entry(digest, 'unpublished');
            if (e) yield e;
          }
        }
      }
    },

    async storedBlob(digest) {
      return (await entry(digest, 'committed')) ?? (await entry(digest, 'unpublished'));
    },

    async unpublishBlob(digest, at) {
      const trash = trashPathOf(digest);
      await fs.mkdir(join(trash, '..'), { recursive: true });
      // The time first, then the rename: a crash between the two leaves a committed blob that looks freshly
      // committed (kept a grace period longer), never a trashed one that looks old (removed too early).
      try {
        await fs.utimes(pathOf(digest), at / 1000, at / 1000);
        await fs.rename(pathOf(digest), trash);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
        throw err;
      }
      return true;
    },

    async republishBlob(digest) {
      // link() refuses to replace: a blob refilled meanwhile stays as it is (the same bytes either way).
      try {
        await fs.link(trashPathOf(digest), pathOf(digest));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return false;
        if (code !== 'EEXIST') throw err;
      }
      await fs.rm(trashPathOf(digest), { force: true });
      return true;
    },

    async removeBlobObject(digest) {
      await fs.rm(trashPathOf(digest), { force: true });
    },

    async readBlob(digest) {
      const fh = await fs.open(pathOf(digest)).catch(() => undefined);
      return fh && createReadStream('', { fd: fh, highWaterMark: 1024 * 1024 });
    },

    removeAbandonedWrites: (opts) => removeAbandonedTemps(join(root, 'tmp'), opts),

    async dropBlob(digest) {
      await fs.rm(pathOf(digest), { force: true });
      await fs.rm(trashPathOf(digest), { force: true });
    },
  };
}
