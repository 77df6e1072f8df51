/**
 * An in-memory {@link BlobRecords} (the S3 blob store's commit records, tombstones included) for tests and benches
 * of the S3 store that need no DynamoDB: the same semantics as the DynamoDB adapter (first commit wins, a commit
 * replaces a tombstone).
 */
import type { Digest } from '../../shared/oci/digest.js';
import type { BlobRecords } from '../../shared/store/ports.js';

export function memoryBlobRecords(): BlobRecords {
  const records = new Map<Digest, { size: number; committedAt: number; unpublishedAt?: number }>();
  return {
    async getBlobRecord(digest) {
      const r = records.get(digest);
      return r && r.unpublishedAt === undefined ? { size: r.size, committedAt: r.committedAt } : undefined;
    },
    async putBlobRecord(digest, size) {
      const r = records.get(digest);
      if (!r || r.unpublishedAt !== undefined) records.set(digest, { size, committedAt: Date.now() });
    },
    async getBlobRecordState(digest) {
      const r = records.get(digest);
      return r && { ...r };
    },
    async unpublishBlobRecord(digest, at) {
      const r = records.get(digest);
      if (!r || r.unpublishedAt !== undefined) return false;
      r.unpublishedAt = at;
      return true;
    },
    async republishBlobRecord(digest) {
      const r = records.get(digest);
      if (!r || r.unpublishedAt === undefined) return false;
      delete r.unpublishedAt;
      return true;
    },
    async deleteBlobRecord(digest, { onlyUnpublished }) {
      const r = records.get(digest);
      if (!r || (onlyUnpublished && r.unpublishedAt === undefined)) return false;
      return records.delete(digest);
    },
  };
}
