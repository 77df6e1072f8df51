/**
 * Pulling an image with skopeo into a new `dir:` destination and reading back what arrived, for the e2e tests
 * that check a pull through the cache byte for byte.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { scratchDir } from './scratch.js';
import { assertSkopeoOk, skopeoCopy, type SkopeoCopyOptions } from './skopeo.js';

/** `sha256:<hex>` of `b`. */
export const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** What a skopeo pull wrote into its `dir:` destination. */
export interface PulledImage {
  /** The destination directory (under the per-process scratch dir). */
  dir: string;
  /** `manifest.json`: the exact manifest bytes (of the list itself with `all`). */
  manifest: Buffer;
  /** Every blob file: `name` is the digest its file name claims, `actual` the digest of its bytes. */
  blobs: Array<{ name: string; actual: string }>;
  /** With `all`: the digests of the bytes of every child manifest (`<hex>.manifest.json`). */
  children: string[];
}

/** Options of {@link pullImage}: skopeo copy's, and the prefix of the new scratch dir (default `pull-`). */
export interface PullOptions extends SkopeoCopyOptions {
  dirPrefix?: string;
}

/**
 * `skopeo copy` of `ref` into a new scratch dir (throws with skopeo's stderr on failure); returns the manifest
 * bytes and every blob file's name and bytes digest.
 */
export async function pullImage(ref: string, opts: PullOptions = {}): Promise<PulledImage> {
  const { dirPrefix = 'pull-', ...copy } = opts;
  const dir = scratchDir(dirPrefix);
  assertSkopeoOk(await skopeoCopy(ref, dir, copy));
  const manifest = readFileSync(join(dir, 'manifest.json'));
  const files = readdirSync(dir);
  const blobs = files.filter((f) => /^[a-f0-9]{64}$/.test(f)).map((f) => ({ name: `sha256:${f}`, actual: sha256(readFileSync(join(dir, f))) }));
  const children = files.filter((f) => /^[a-f0-9]{64}\.manifest\.json$/.test(f)).map((f) => sha256(readFileSync(join(dir, f))));
  return { dir, manifest, blobs, children };
}
