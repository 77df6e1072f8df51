/**
 * The BlobStore contract against the filesystem store. `fetchLocation` plays the local server's blob route:
 * it checks the signed `/_blobs/...` URL with `verifyUrl` and reads the file, serving a single `Range` with
 * `range-parser` (the parser bin/server.ts uses), so the contract's 206 case runs here too; the server's own
 * route is covered by the e2e pulls.
 */
import { mkdtempSync, promises as fs, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import parseRange from 'range-parser';
import { openFsBlobStore } from '../../shared/store/fs-blob-store.js';
import { describeBlobStoreContract } from '../contract/blob-store.contract.js';

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await walk(path)));
    else out.push(path);
  }
  return out;
}

describeBlobStoreContract('filesystem', async () => {
  const root = mkdtempSync(join(tmpdir(), 'pt-fs-blobs-'));
  const store = await openFsBlobStore(root);
  return {
    store,
    async fetchLocation(url, headers = {}) {
      const u = new URL(url, 'http://registry.invalid');
      const digest = store.verifyUrl(u.pathname, u.searchParams);
      if (!digest) return { status: 403, body: Buffer.alloc(0), headers: new Headers() };
      // As the blob route: the committed file, else the copy an unpublish kept in trash/.
      const fh = await store.openBlob(digest);
      const bytes = fh && (await fh.readFile().finally(() => fh.close()));
      if (!bytes) return { status: 404, body: Buffer.alloc(0), headers: new Headers() };
      const range = Object.entries(headers).find(([k]) => k.toLowerCase() === 'range')?.[1];
      const parsed = range ? parseRange(bytes.length, range, { combine: true }) : -2;
      if (parsed === -1) return { status: 416, body: Buffer.alloc(0), headers: new Headers({ 'content-range': `bytes */${bytes.length}` }) };
      if (parsed !== -2 && parsed.type === 'bytes' && parsed.length === 1) {
        const { start, end } = parsed[0];
        return {
          status: 206,
          body: bytes.subarray(start, end + 1),
          headers: new Headers({ 'content-range': `bytes ${start}-${end}/${bytes.length}` }),
        };
      }
      return { status: 200, body: bytes, headers: new Headers({ 'content-length': String(bytes.length) }) };
    },
    async listObjects() {
      return (await walk(root)).map((p) => relative(root, p));
    },
    async close() {
      rmSync(root, { recursive: true, force: true });
    },
  };
});
