/**
 * `verify`: re-hashes every committed blob and every stored manifest against its digest. Damaged content (a file
 * changed on disk, an object overwritten) is reported, and with `repair` dropped at once — a blob's record and
 * bytes (under its fill lease), a manifest's item and references — so the next pull refetches it from the upstream
 * instead of serving wrong bytes.
 *
 * A run may stop at a deadline (the `gc` function's `{"action":"verify"}` invocation: a Lambda runs ≤ 15 min, and
 * hashing a large bucket takes longer): it checks blobs in digest order, then repositories in name order, and with
 * `resume` saves where it stopped (lifecycle state `verify`), so the next run with `resume` goes on from there. A
 * blob once started is hashed whole. Without `resume` (the CLI) a run starts at the beginning and saves nothing.
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
  /** False when the run stopped at its deadline; with `resume` the next run goes on where it stopped. */
  complete: boolean;
}

/** Where a stopped run was (lifecycle state `verify`): the last blob digest or repository name it finished. */
interface VerifyState {
  phase: 'blobs' | 'manifests';
  after?: string;
  startedAt: number;
}

const STATE_KEY = 'verify';
/** A saved run older than this is started afresh (ms). */
const STALE_MS = 7 * 24 * 60 * 60 * 1000;

/** Verifies the store (see the file header); `deadline` in ms since the epoch (wall clock). */
export async function verifyStore(
  deps: RegistryDeps,
  c: Collector,
  opts: { repair: boolean; deadline?: number; resume?: boolean },
): Promise<VerifyReport> {
  const report: VerifyReport = {
    checkedBlobs: 0, checkedBytes: 0, checkedManifests: 0, damagedBlobs: [], damagedManifests: [], repaired: opts.repair, complete: false,
  };
  const stopped = () => opts.deadline !== undefined && Date.now() >= opts.deadline;
  const saved = opts.resume ? await c.index.getLifecycleState(STATE_KEY) : undefined;
  let state: VerifyState = saved ? (JSON.parse(saved) as VerifyState) : { phase: 'blobs', startedAt: deps.now() };
  if (deps.now() - state.startedAt > STALE_MS) state = { phase: 'blobs', startedAt: deps.now() };
  const stop = async () => {
    if (opts.resume) await c.index.putLifecycleState(STATE_KEY, JSON.stringify(state));
    return report;
  };

  if (state.phase === 'blobs') {
    for await (const b of c.reaper.listStoredBlobs(state.after as Digest | undefined)) {
      if (stopped()) return stop();
      state.after = b.digest;
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
    state = { phase: 'manifests', startedAt: state.startedAt };
  }

  for (let page = 0; page < 100_000; page++) {
    const names = await deps.stores.tags.listRepositories({ last: state.after, n: 1000 });
    for (const name of names) {
      if (stopped()) return stop();
      await verifyManifests(deps, c, name, opts.repair, report);
      state.after = name;
    }
    if (names.length < 1000) break;
  }
  report.complete = true;
  if (opts.resume) await c.index.putLifecycleState(STATE_KEY, undefined);
  return report;
}

/** Re-hashes the manifests of repository `name` (paged), counting into `report`; drops damaged ones on `repair`. */
async function verifyManifests(deps: RegistryDeps, c: Collector, name: string, repair: boolean, report: VerifyReport): Promise<void> {
  for (let after: string | undefined, p = 0; p < 1_000_000; p++) {
    const batch = await c.index.listManifestRecords(name, { after, limit: 200 });
    for (const m of batch) {
      report.checkedManifests++;
      if (digestLike(m.digest, m.body) === m.digest) continue;
      report.damagedManifests.push({ name, digest: m.digest });
      deps.log.warn('manifest does not match its digest', { name, digest: m.digest, repair });
      if (repair) {
        const referencedBlobs = referencesOf(m.mediaType, m.body).blobs.map((b) => b.digest);
        await c.index.deleteManifest(name, m.digest, { referencedBlobs });
      }
    }
    if (batch.length < 200) break;
    after = batch[batch.length - 1].digest;
  }
}
