/**
 * Helpers of the lifecycle tests over the in-process harness: a full pull (manifest, then every blob through its
 * 307 and the signed local URL, each checked against its digest) and a store consistency check.
 */
import { createHash } from 'node:crypto';
import type { Digest } from '../../shared/oci/digest.js';
import type { BlobReaper, LifecycleIndex, TagIndex } from '../../shared/store/ports.js';
import { readRepository } from '../../shared/registry/lifecycle/repository.js';
import type { createHarness } from './harness.js';

type Harness = Awaited<ReturnType<typeof createHarness>>;

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * Pulls `name:ref` like a client; throws unless every manifest and blob is served byte-exact. `read` GETs a blob
 * location (default: the harness's own, for the embedded store).
 */
export async function pullImage(
  h: Harness,
  name: string,
  ref: string,
  read: (url: string) => Buffer | Promise<Buffer> = h.readLocation,
): Promise<{ digest: string; blobs: string[] }> {
  const res = await h.request('GET', `/v2/${name}/manifests/${ref}`);
  if (res.status !== 200) throw new Error(`manifest ${name}:${ref} answered ${res.status}`);
  const body = h.bodyOf(res)!;
  const digest = res.headers['Docker-Content-Digest'];
  if (sha256(body) !== digest) throw new Error(`manifest ${name}:${ref} does not match its digest`);
  const m = JSON.parse(body.toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  const blobs = [m.config.digest, ...m.layers.map((l) => l.digest)];
  for (const b of blobs) {
    const r = await h.request('GET', `/v2/${name}/blobs/${b}`);
    if (r.status !== 307) throw new Error(`blob ${b} of ${name} answered ${r.status}`);
    const bytes = await read(r.headers.Location);
    if (sha256(bytes) !== b) throw new Error(`blob ${b} of ${name} served wrong bytes`);
  }
  return { digest, blobs };
}

/**
 * Checks the store's invariants: every tag's manifest is stored; every committed blob hashes to its digest;
 * every stored manifest's committed blobs carry a reference item. Returns the problems found (none: []).
 */
export async function storeProblems(index: LifecycleIndex & TagIndex, reaper: BlobReaper): Promise<string[]> {
  const problems: string[] = [];
  for (const name of await index.listRepositories({ n: 100_000 })) {
    const repo = await readRepository(index, name);
    for (const t of repo.tags) if (!repo.manifests.has(t.digest)) problems.push(`tag ${name}:${t.tag} points at a missing manifest`);
    for (const m of repo.manifests.values()) {
      for (const b of m.blobs) {
        const stored = await reaper.storedBlob(b.digest);
        if (stored?.state === 'committed' && (await index.blobReferrers(b.digest)).length === 0) problems.push(`blob ${b.digest} of ${name}@${m.digest} has no reference item`);
      }
    }
  }
  for await (const b of reaper.listStoredBlobs()) {
    if (b.state !== 'committed') continue;
    const chunks: Buffer[] = [];
    for await (const c of (await reaper.readBlob(b.digest))!) chunks.push(c as Buffer);
    if (sha256(Buffer.concat(chunks)) !== b.digest) problems.push(`blob ${b.digest} does not match its digest`);
  }
  return problems;
}

/** The states of `digests` in storage: committed, unpublished, or absent. */
export async function blobStates(reaper: BlobReaper, digests: string[]): Promise<string[]> {
  return Promise.all(digests.map(async (d) => (await reaper.storedBlob(d as Digest))?.state ?? 'absent'));
}
