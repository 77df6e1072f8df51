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
  /**
   * When a client last pulled the tag (GET/HEAD of the manifest by this tag), written at most once per
   * `lifecycle.touchIntervalSeconds` (shared/registry/pulls.ts), so it may lag by up to that interval. Absent on
   * records written before the lifecycle existed: read `fetchedAt` then. The lifecycle evicts by it.
   */
  pulledAt?: number;
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
  /** Updates `pulledAt` (ms) only; a no-op when the tag is not there. */
  recordTagPull(name: string, tag: string, pulledAt: number): Promise<void>;
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
  /**
   * When a client last pulled the manifest by digest, or when it was stored (ms); returned by `getManifest`,
   * set by `putManifest` (to `now` unless given). Written at most once per `lifecycle.touchIntervalSeconds`.
   */
  pulledAt?: number;
  /** What the rule's signature policy found when the manifest was stored or last verified; absent: never checked. */
  verification?: ManifestVerification;
}

/**
 * A signature policy's verdict on a stored manifest (shared/registry/signature-check.ts). A manifest the policy
 * refuses is never stored, so there is no `refused`.
 */
export interface ManifestVerification {
  /**
   * `verified`: signed by a key of the policy, or listed by an index that is; `unsigned`: not verified and served
   * anyway (mode `warn`; `reason` says why); `exempt`: signature material (cosign signatures, bundles), let through.
   */
  result: 'verified' | 'unsigned' | 'exempt';
  reason?: 'unsigned' | 'unknown-key' | 'digest-mismatch';
  /** Id of the policy's key set the verdict was made under (shared/verify/keys.ts); another set verifies again. */
  keySet: string;
  /** Where the signature was found: `tag`, `referrers`, or `index sha256:<hex>` (covered by a signed index). */
  via?: string;
  /** Id of the key that signed (verified only). */
  keyId?: string;
  /** When the verdict was made, ms since the epoch. */
  at: number;
}

/** The manifest store: manifests by repository and digest (DynamoDB item, S3 when large; SQLite `manifests`). */
export interface ManifestStore {
  getManifest(name: string, digest: Digest): Promise<ManifestRecord | undefined>;
  /**
   * Stores a verified manifest and records the blobs it references as referenced by this manifest of rule `rule`
   * (the garbage collector's reference items, see {@link LifecycleIndex}); the manifest item is written last (the
   * commit point). The blobs themselves may not be stored yet. It links no blob to the repository (see
   * {@link BlobLinks}). Storing a manifest again sets its `pulledAt` again (to `record.pulledAt`, else now).
   */
  putManifest(record: ManifestRecord, referencedBlobs: string[], rule?: string): Promise<void>;
  /**
   * Updates `pulledAt` (ms) only. Returns false when the manifest is not stored: a writer about to point a tag
   * at a manifest it did not just store calls this first, so a concurrent garbage collection either sees the new
   * time (and keeps the manifest) or has already deleted it (and the writer stores it again).
   */
  recordManifestPull(name: string, digest: Digest, pulledAt: number): Promise<boolean>;
  /** Replaces the verification of a stored manifest; a no-op (creating nothing) when it is not stored. */
  recordVerification(name: string, digest: Digest, verification: ManifestVerification): Promise<void>;
}

/**
 * Repository ↔ blob links: the repository's own upstream confirmed the blob (a fill for that repository read it, a
 * HEAD of it named the digest and size, or its GET hashed to the digest; shared/registry/blob-confirm.ts), so it is
 * served for the repository without asking
 * again. A manifest referencing a blob is no such confirmation (its upstream vouches for the manifest's bytes, not
 * for having the blobs it names: a manifest naming the digest of another rule's private blob must not make that
 * blob servable), so manifests write reference items for the garbage collector, never links. Links are a serving
 * concern only; the garbage collector goes by reference items, and drops links with their repository.
 */
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
  /** The committed record; undefined when there is none or it is unpublished (a tombstone). */
  getBlobRecord(digest: Digest): Promise<{ size: number; committedAt: number } | undefined>;
  /** Commits a blob: the first commit wins; a tombstone is replaced (a refill after a GC). */
  putBlobRecord(digest: Digest, size: number): Promise<void>;
  /** The record whatever its state: `unpublishedAt` (ms) set on a tombstone. */
  getBlobRecordState(digest: Digest): Promise<{ size: number; committedAt: number; unpublishedAt?: number } | undefined>;
  /** Turns a committed record into a tombstone unpublished at `at` (ms); false when not committed. */
  unpublishBlobRecord(digest: Digest, at: number): Promise<boolean>;
  /** Turns a tombstone back into the committed record; false when it is not a tombstone. */
  republishBlobRecord(digest: Digest): Promise<boolean>;
  /** Deletes the record (only a tombstone when `onlyUnpublished`); true when this call deleted it. */
  deleteBlobRecord(digest: Digest, opts: { onlyUnpublished: boolean }): Promise<boolean>;
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
  /** The object's bytes, or undefined when there is none. */
  getObject(key: string): Promise<Uint8Array | undefined>;
  /** True when an object `key` exists (one HEAD). */
  hasObject(key: string): Promise<boolean>;
  /** Deletes object `key` (a no-op when there is none). */
  deleteObject(key: string): Promise<void>;
  /**
   * Objects whose keys start with `prefix`, in key order after `after` (lazily, paged underneath): size in bytes,
   * `modified` the last write (ms).
   */
  listObjects(prefix: string, after?: string): AsyncIterable<{ key: string; size: number; modified: number }>;
}

/**
 * Upstream listings kept for offline use (referrers indexes, signature coverage markers; tag lists in earlier
 * releases): the JSON body as the cache served it, by repository and a key built from validated parts (e.g.
 * `referrers/sha256:<hex>`). Bodies are small (≤ ~350 KB; larger ones are not kept). Times in ms.
 *
 * A listing is kept only for a repository that holds a tag or a manifest, so requests naming repositories the
 * cache never pulled (any public name upstream) cannot grow the index; when the lifecycle empties a repository its
 * listings go with it ({@link LifecycleIndex.dropRepositoryIfEmpty}). Writers and that drop are ordered so that no
 * listing outlives its repository's content (SQLite: one statement; DynamoDB: the catalog marker protocol).
 */
export interface ListingCache {
  getListing(name: string, key: string): Promise<{ body: string; fetchedAt: number } | undefined>;
  /** Keeps `body` under `name`/`key` when `name` holds a tag or a manifest; true when kept. */
  putListing(name: string, key: string, body: string): Promise<boolean>;
}

/**
 * The index side of the lifecycle (garbage collection, purge, `ls`), over the same index as the ports above.
 * Listings are paged in key order (byte order), so a pass can stop and resume from the last key it handled.
 * The deletion rules that make a concurrent pull safe live in shared/registry/lifecycle/ (see gc.ts); this
 * port only gives conditional, idempotent steps.
 *
 * Blob references: `putManifest` records, per referenced blob, that manifest `<name>@<digest>` of rule `<rule>`
 * references it (DynamoDB `pk=blob#<digest>, sk=ref#<rule>#<name>@<manifest digest>`; SQLite `blob_refs`).
 * A blob no reference item names is referenced by no stored manifest of any repository.
 */
export interface LifecycleIndex {
  /** A repository's tags, full records, in tag order after `after`, at most `limit`. */
  listTagRecords(name: string, opts: { after?: string; limit: number }): Promise<TagRecord[]>;
  /** A repository's manifests with bodies and `pulledAt`, in digest order after `after`, at most `limit`. */
  listManifestRecords(name: string, opts: { after?: string; limit: number }): Promise<ManifestRecord[]>;
  /**
   * Deletes the tag if it still points at `expect.digest` and, when `expect.pulledAt` is given, was last pulled
   * then (a pull or a move since keeps it). True when this call deleted it.
   */
  deleteTagIf(name: string, tag: string, expect: { digest: Digest; pulledAt?: number }): Promise<boolean>;
  /**
   * Deletes a manifest: the manifest item first (only if its `pulledAt` is still `ifPulledAt`, when given), then
   * its blob reference items (`referencedBlobs`, as given to `putManifest`) and its large body's reference, if any
   * (the body object itself goes with a later GC pass: {@link LifecycleIndex.sweepManifestBodies}). True when
   * this call deleted the item; false when it was gone or pulled since (then nothing else is touched).
   */
  deleteManifest(name: string, digest: Digest, opts: { referencedBlobs: string[]; ifPulledAt?: number }): Promise<boolean>;
  /**
   * Removes what is left of a repository with no tags and no manifests (blob links, kept listings, its catalog
   * entry). Returns false, touching nothing, when it still has a tag or a manifest.
   */
  dropRepositoryIfEmpty(name: string): Promise<boolean>;
  /**
   * Removes the listings kept for repositories that hold no tag and no manifest (kept by releases before listings
   * required content: any name a client asked for), a page at a time from cursor `after` until `stopped()`; with
   * `dryRun` only counts. `next` is the cursor to resume from, undefined when the whole index was gone through.
   * SQLite: one statement; DynamoDB: a paged Scan of listing items (run once per store, see lifecycle/gc.ts).
   */
  sweepListings(opts: { after?: string; dryRun: boolean; stopped(): boolean }): Promise<{ removed: number; next?: string }>;
  /**
   * Records that manifest `<name>@<digest>` of rule `rule` references `blobs` (what `putManifest` does for new
   * manifests; used to record the references of manifests stored before the lifecycle existed). Idempotent.
   */
  addBlobReferences(name: string, digest: Digest, rule: string, blobs: string[]): Promise<void>;
  /**
   * Finishes manifest deletions a crash interrupted (their reference items; see the DynamoDB adapter's journal).
   * Returns how many it finished; 0 for stores whose deletes are one transaction.
   */
  finishInterruptedDeletes(): Promise<number>;
  /** The distinct rules whose stored manifests reference `digest`, sorted; [] when none does. */
  blobReferrers(digest: Digest): Promise<string[]>;
  /**
   * True when a stored manifest of repository `name` (of rule `rule`) references blob `digest` (one read of its
   * reference items). The signature policy serves a blob under `enforce` only then (shared/registry/signature-check.ts).
   */
  referencedBy(digest: Digest, rule: string, name: string): Promise<boolean>;
  /**
   * Optional capability of stores keeping large manifest bodies apart from their items (DynamoDB: S3
   * `manifests/<alg>/<hex>`, shared by digest across repositories): goes through those objects in key order after
   * `after` and removes each one no stored manifest points to, written before `graceFrom` (ms). Never one a
   * manifest item points to, also while a writer is storing it (the adapter's protocol). `removed` is what a
   * dry run would remove. Absent: bodies live inside the index (SQLite) and go with their manifests.
   */
  sweepManifestBodies?(after: string | undefined, opts: { graceFrom: number; dryRun: boolean }): AsyncIterable<{ key: string; size: number; removed: boolean }>;
  /** A small JSON value of the lifecycle's own (GC progress, last usage report), by key; undefined when unset. */
  getLifecycleState(key: string): Promise<string | undefined>;
  /** Sets (or with `undefined`, removes) a lifecycle state value (JSON text, ≤ ~300 KB). */
  putLifecycleState(key: string, value: string | undefined): Promise<void>;
}

/** A stored blob object as the garbage collector sees it. Sizes in bytes, times in ms. */
export interface StoredBlob {
  digest: Digest;
  size: number;
  /**
   * `committed`: visible (served); `unpublished`: taken out of the index by a GC, its object kept for the grace
   * period so URLs already handed out still work; `orphan`: an object no record commits (a fill that crashed
   * between upload and commit; a GC that crashed part-way).
   */
  state: 'committed' | 'unpublished' | 'orphan';
  /** When it entered that state: committed at, unpublished at, or the object's last modification. */
  since: number;
}

/**
 * The storage side of the lifecycle, implemented by each blob store (filesystem: the blob files plus a
 * `trash/` directory; S3: the objects plus their DynamoDB records). Every step is idempotent.
 */
export interface BlobReaper {
  /** Every stored blob object in digest order after `after` (lazily, paged underneath). */
  listStoredBlobs(after?: Digest): AsyncIterable<StoredBlob>;
  /** The state of one digest's object (undefined: no object). */
  storedBlob(digest: Digest): Promise<StoredBlob | undefined>;
  /**
   * Index first: a committed blob stops being visible (`stat` → undefined, so the next pull refills it) while its
   * object stays, so URLs handed out before still work. `at` (ms) is recorded as the unpublish time. False when
   * it was not committed.
   */
  unpublishBlob(digest: Digest, at: number): Promise<boolean>;
  /** Undoes {@link unpublishBlob} while the object is still there; false when it was not unpublished. */
  republishBlob(digest: Digest): Promise<boolean>;
  /** Deletes the object of a blob that is not committed (unpublished or orphan), and its tombstone. */
  removeBlobObject(digest: Digest): Promise<void>;
  /** The stored bytes of a committed blob (for `verify`), or undefined. */
  readBlob(digest: Digest): Promise<Readable | undefined>;
  /** Drops a damaged committed blob at once, record and object (`verify --repair`): the next pull refills it. */
  dropBlob(digest: Digest): Promise<void>;
  /**
   * Optional: removes (with `dryRun`, only counts) what writes whose process died left behind (the filesystem
   * store's temp files, fs-temp-files.ts); never a write in progress. S3 needs none: a bucket lifecycle rule
   * aborts incomplete multipart uploads after a day. Returns the files and their bytes.
   */
  removeAbandonedWrites?(opts: { dryRun?: boolean }): Promise<{ files: number; bytes: number }>;
}

/** Everything the registry core needs from storage. */
export interface Stores {
  tags: TagIndex;
  manifests: ManifestStore;
  links: BlobLinks;
  blobs: BlobStore;
  leases: FillLeases;
  listings: ListingCache;
  /** The lifecycle's view of the index (GC, purge, ls); absent in stores that do not support it. */
  lifecycle?: LifecycleIndex;
  /** The lifecycle's view of blob storage; absent in stores that do not support it. */
  reaper?: BlobReaper;
}
