/**
 * `verify`: re-hashes every committed blob and every stored manifest against its digest. Damaged content (a file
 * changed on disk, an object overwritten) is reported, and with `repair` dropped at once — a blob's record and
 * bytes (under its fill lease), a manifest's item and references — so the next pull refetches it from the upstream
 * instead of serving wrong bytes.
 */
import { createHash } from 'node:crypto';
import { digestLike, parseDigest, type Digest } from '../../oci/digest.js';
import type { RegistryDeps } from '../deps.js';
import { withBlobLease, type Collector } from './collect.js';
import { referencesOf } from './repository.js';

/** What `verify` found. Counts; bytes. */
export interface VerifyReport {
  checkedBlobs: number;
  checkedBytes: number;
  checkedManifests: number;
  damagedBlobs: Digest[];
  damagedManifests: Array<{ name: string; digest: Digest }>;
  /** True when the damaged content was dropped (`--repair`). */
  repaired: boolean;
}

/** Verifies the store (see the file header). */
export async function verifyStore(deps: RegistryDeps, c: Collector, opts: { repair: boolean }): Promise<VerifyReport> {
  const report: VerifyReport = { checkedBlobs: 0, checkedBytes: 0, checkedManifests: 0, damagedBlobs: [], damagedManifests: [], repaired: opts.repair };
  for await (const b of c.reaper.listStoredBlobs()) {
    if (b.state !== 'committed') continue;
    const stream = await c.reaper.readBlob(b.digest);
    if (!stream) continue;
    const hash = createHash(parseDigest(b.digest)!.algorithm);
    for await (const chunk of stream) {
      hash.update(chunk as Buffer);
      report.checkedBytes += (chunk as Buffer).length;
    }
    report.checkedBlobs++;
    if (`${parseDigest(b.digest)!.algorithm}:${hash.digest('hex')}` === b.digest) continue;
    report.damagedBlobs.push(b.digest);
    deps.log.warn('blob does not match its digest', { digest: b.digest, repair: opts.repair });
    if (opts.repair) await withBlobLease(c, b.digest, async (held) => (await held()) && c.reaper.dropBlob(b.digest));
  }
  for (let last: string | undefined, page = 0; page < 100_000; page++) {
    const names = await deps.stores.tags.listRepositories({ last, n: 1000 });
    for (const name of names) {
      for (let after: string | undefined, p = 0; p < 1_000_000; p++) {
        const batch = await c.index.listManifestRecords(name, { after, limit: 200 });
        for (const m of batch) {
          report.checkedManifests++;
          if (digestLike(m.digest, m.body) === m.digest) continue;
          report.damagedManifests.push({ name, digest: m.digest });
          deps.log.warn('manifest does not match its digest', { name, digest: m.digest, repair: opts.repair });
          if (opts.repair) {
            const referencedBlobs = referencesOf(m.mediaType, m.body).blobs.map((b) => b.digest);
            await c.index.deleteManifest(name, m.digest, { referencedBlobs });
          }
        }
        if (batch.length < 200) break;
        after = batch[batch.length - 1].digest;
      }
    }
    if (names.length < 1000) break;
    last = names[names.length - 1];
  }
  return report;
}
