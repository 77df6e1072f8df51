/**
 * Storage ports. Small on purpose: the embedded adapters (SQLite + filesystem) and the AWS adapters
 * (DynamoDB + S3) implement them, and one contract suite per port runs against each. Adapters return
 * `undefined` for "not found" and never throw RegistryError themselves, except `BlobStore.write` which throws
 * `DIGEST_INVALID`/`SIZE_INVALID` when the bytes do not match.
 */
import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.js';

/** A tag → digest entry. Times are milliseconds since the epoch. */
export interface TagRecord {
  /** Cache-side repository name, `<rule prefix>/<upstream repository>` (normalised, e.g. `library/` added). */
  name: string;
  tag: string;
  digest: Digest;
  mediaType: string;
  /** Manifest size in bytes. */
  size: number;
  /** When the manifest the tag points at was fetched from the upstream. */
  fetchedAt: number;
  /** When the upstream was last asked (HEAD or GET) what the tag points at. */
  checkedAt: number;
  /**
   * When the scheduled refresh should re-check the tag (checkedAt + the rule's TTL for the tag); absent for
   * tags the rule never re-checks once cached (e.g. release tags). Indexed: the refresh queries it.
   */
  dueAt?: number;
  /** What the last re-check found. */
  lastCheck?: LastCheck;
}

/** The outcome of one upstream re-check of a tag. `error` is a short, credential-free message. */
export interface LastCheck {
  at: number;
  result: 'unchanged' | 'moved' | 'gone' | 'error';
  error?: string;
}

/** The tag index (DynamoDB `pk=repo#<name>, sk=tag#<tag>`; SQLite table `tags`). */
export interface TagIndex {
  getTag(name: string, tag: string): Promise<TagRecord | undefined>;
  /** Inserts or replaces the entry. */
  putTag(record: TagRecord): Promise<void>;
  /** Updates `checkedAt` (ms) only; a no-op when the tag is not there. */
  touchTag(name: string, tag: string, checkedAt: number): Promise<void>;
  /**
   * Records a re-check: sets `checkedAt`, `dueAt` (undefined removes it: never due) and `lastCheck`, keeping
   * the digest. A no-op when the tag is not there.
   */
  recordCheck(name: string, tag: string, check: { checkedAt: number; dueAt?: number; lastCheck: LastCheck }): Promise<void>;
  /** Removes a tag from the index (the manifests it pointed at stay pullable by digest). */
  deleteTag(name: string, tag: string): Promise<void>;
  /**
   * Tags whose `dueAt` ≤ `now` (ms), earliest due first, at most `limit`. Served by an index on the due time
   * (SQLite index; DynamoDB GSI), never a scan of all tags.
   */
  listDueTags(now: number, limit: number): Promise<TagRecord[]>;
  /** Tags of a repository, lexically sorted, at most `n` after `last`. */
  listTags(name: string, opts?: { last?: string; n?: number }): Promise<string[]>;
  /** Repository names the cache holds (any tag or manifest), lexically sorted, at most `n` after `last`. */
  listRepositories(opts?: { last?: string; n?: number }): Promise<string[]>;
}

/** A stored manifest: the upstream's bytes, unchanged. */
export interface ManifestRecord {
  name: string;
  digest: Digest;
  mediaType: string;
  /** Body size in bytes. */
  size: number;
  body: Uint8Array;
}

/** The manifest store: manifests by repository and digest (DynamoDB item, S3 when large; SQLite `manifests`). */
export interface ManifestStore {
  getManifest(name: string, digest: Digest): Promise<ManifestRecord | undefined>;
  /**
   * Stores a verified manifest and links the blobs it references to the repository, in one commit
   * (the blobs themselves may not be stored yet).
   */
  putManifest(record: ManifestRecord, referencedBlobs: string[]): Promise<void>;
}

/** Repository ↔ blob links: a blob is served for a repository only if that repository references it. */
export interface BlobLinks {
  isLinked(name: string, digest: Digest): Promise<boolean>;
  link(name: string, digest: Digest): Promise<void>;
}

/** Where a client fetches a stored blob: a (signed, short-lived) URL, absolute or relative to the registry. */
export type BlobLocation = { kind: 'redirect'; url: string };

/** Content-addressed blob bytes (`blobs/<algorithm>/<hex>`), shared by all repositories. */
export interface BlobStore {
  /** Size in bytes of a committed blob, or `undefined`. */
  stat(digest: Digest): Promise<{ size: number } | undefined>;
  /**
   * Streams `source` into the store, hashing while streaming, and commits only when the bytes hash to
   * `digest` (and match `expectedSize` when given). Nothing is visible on failure.
   * @throws RegistryError `DIGEST_INVALID` / `SIZE_INVALID` on mismatch; the source's error if it fails.
   */
  write(digest: Digest, source: Readable, expectedSize?: number): Promise<{ size: number }>;
  /** Where a client can GET the committed blob. */
  locate(digest: Digest): Promise<BlobLocation>;
  /**
   * Optional capability: `true` when this store's locations also serve a blob while a `write` of it is still in
   * progress in this process (from the moment `write` is called: tailing the bytes as they arrive, ending only
   * once they were verified, cut off when the write fails). The registry then answers a blob miss with the
   * location as soon as the upstream started sending, instead of after the commit. Absent: locations serve
   * committed blobs only (S3).
   */
  streamsWhileFilling?: true;
  /**
   * Optional capability: false when the store has no room for `bytes` more (free space below it plus a margin),
   * so a fill of that size fails before its first byte instead of part-way (a full disk; see storage-full.ts).
   * Absent: the store does not run out (S3), or cannot tell.
   */
  hasRoomFor?(bytes: number): Promise<boolean>;
}

/**
 * Committed-blob records: the commit point of the AWS blob store (DynamoDB `pk=blob#<digest>`). A blob's
 * S3 object is served only once its record exists, and the record is written only after the bytes hashed to
 * the digest. (The filesystem store needs none: its rename is the commit.) Sizes in bytes, times in ms.
 */
export interface BlobRecords {
  getBlobRecord(digest: Digest): Promise<{ size: number; committedAt: number } | undefined>;
  putBlobRecord(digest: Digest, size: number): Promise<void>;
}

/**
 * A fill lease as stored. Times are milliseconds since the epoch, stamped by the clock of the adapter that wrote
 * them (Lambda clocks are NTP-synced; the stale window is seconds, far above any skew).
 */
export interface FillLease {
  owner: string;
  /** Hard expiry (`ttlSeconds` after the last acquire or heartbeat): anyone may take the lease from then on. */
  expiresAt: number;
  /** The fill's last sign of life: when the lease was taken, or its last {@link FillLeases.heartbeatLease}. */
  heartbeatAt: number;
}

/**
 * Fill leases: one upstream download per digest across requests, processes and Lambda instances (DynamoDB
 * conditional writes with a TTL attribute; a SQLite row locally). The protocol, as shared/registry/fill-lease.ts
 * runs it:
 * - **take**: {@link acquireLease} is one conditional write that succeeds when there is no lease, when it
 *   expired, when it is already `owner`'s, or when its heartbeat is older than `staleSeconds` (a takeover of a
 *   fill that died or never started). It stamps `heartbeatAt` = now.
 * - **heartbeat**: the process running the fill (never a waiter) calls {@link heartbeatLease} while the fill makes
 *   progress; it is conditional on still being the owner, and `false` tells the fill it was taken over.
 * - **wait**: a request waiting for someone else's fill reads the lease ({@link getLease}) and tries to take it only
 *   when it is gone, expired or stale, so a healthy fill's waiters make reads, never failing writes.
 * - **release**: the filler deletes its own lease when the fill ends, committed or not ({@link releaseLease}).
 */
export interface FillLeases {
  /**
   * Takes the lease on `key` for `owner` for `ttlSeconds` unless another owner holds a live one; true when taken.
   * `staleSeconds`: a lease whose heartbeat is older than this is taken over too (absent: only expiry frees it).
   */
  acquireLease(key: string, owner: string, ttlSeconds: number, staleSeconds?: number): Promise<boolean>;
  /**
   * Records a sign of life of `owner`'s lease: `heartbeatAt` = now and the expiry pushed to now + `ttlSeconds`.
   * One conditional write; false (and nothing written) when `owner` no longer holds the lease.
   */
  heartbeatLease(key: string, owner: string, ttlSeconds: number): Promise<boolean>;
  /** The lease on `key` (expired or not), or undefined when there is none. One read. */
  getLease(key: string): Promise<FillLease | undefined>;
  /** Releases the lease if `owner` still holds it (a no-op otherwise). */
  releaseLease(key: string, owner: string): Promise<void>;
}

/**
 * Bytes too large for an index item (manifests over ~350 KB on DynamoDB, whose items are ≤ 400 KB):
 * S3 objects under `manifests/`. Keys are built from validated digests only.
 */
export interface LargeObjectStore {
  putObject(key: string, bytes: Uint8Array): Promise<void>;
  getObject(key: string): Promise<Uint8Array | undefined>;
}

/**
 * Upstream listings kept for offline use (tag list pages, referrers indexes): the JSON body as the cache
 * served it, by repository and a key built from validated parts (e.g. `tags?n=10&last=v1`,
 * `referrers/sha256:<hex>`). Bodies are small (≤ ~350 KB; larger ones are not kept). Times in ms.
 */
export interface ListingCache {
  getListing(name: string, key: string): Promise<{ body: string; fetchedAt: number } | undefined>;
  putListing(name: string, key: string, body: string): Promise<void>;
}

/** Everything the registry core needs from storage. */
export interface Stores {
  tags: TagIndex;
  manifests: ManifestStore;
  links: BlobLinks;
  blobs: BlobStore;
  leases: FillLeases;
  listings: ListingCache;
}
