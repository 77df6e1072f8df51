/**
 * The signature policy at fill time (README "Signature policy"; config-verify.ts): a manifest of a repository a
 * rule's policy covers is stored only once its verdict is known, and the verdict is stored with it.
 * - **verified**: a cosign signature by one of the policy's keys names exactly this digest (shared/verify/), or an
 *   image index that was verified lists it (its platform manifests are covered by reference: when an index
 *   verifies, a marker per platform manifest is kept, `verified-by/<digest>` in the repository's listings, and a
 *   platform manifest pulled after it is verified by that marker without asking the upstream);
 * - **exempt**: signature material itself (cosign signature manifests, Sigstore bundles), which clients pull to
 *   verify it themselves;
 * - otherwise, in mode `enforce`, **refused**: nothing is stored (the manifest, its blob links, so none of its
 *   blobs either) and the pull answers 403 `DENIED` naming the rule and why; the refusal is remembered for the
 *   rule's `negativeCacheSeconds`. In mode `warn` it is stored and served as **unsigned**, with the reason.
 * A stored verdict stands while the policy's key set is the same: a warm pull costs no upstream request. A manifest
 * stored under other keys (or before the policy existed) is verified again on its next pull, and in mode `enforce`
 * a manifest stored unsigned under `warn` too. Every verdict made is logged (`"event":"verify"`) and counted
 * (`metrics.verification`); the request line of every manifest request a policy covers says the verdict (`verify`).
 * Under `enforce` blobs are served only for manifests that passed ({@link admitBlob}).
 */
import type { Digest } from '../oci/digest.js';
import { isIndexMediaType } from '../oci/media-types.js';
import { RegistryError } from '../oci/errors.js';
import type { VerifyResult } from '../observe/metrics.js';
import { noteVerify } from '../observe/request-scope.js';
import type { ManifestRecord, ManifestVerification } from '../store/ports.js';
import { indexChildren, isSignatureArtifact } from '../verify/cosign-formats.js';
import { policyFor, type SignaturePolicy } from '../verify/policy.js';
import { checkSignatures, type SignatureFailure } from '../verify/signatures.js';
import type { RegistryDeps } from './deps.js';
import { createNegativeCache } from './negative-cache.js';
import type { ResolvedName } from './rules.js';
import { createSingleFlight } from './single-flight.js';

/** Platform manifests of one index that get a coverage marker (an index lists a few dozen at most in practice). */
const MAX_COVERED = 256;
const coverageKey = (digest: string) => `verified-by/${digest}`;

const WHY: Record<SignatureFailure, string> = {
  unsigned: 'the image is not signed',
  'unknown-key': 'no signature is by a key the policy trusts',
  'digest-mismatch': 'the signature is for another image (digest mismatch)',
};

/**
 * Under mode `enforce`, a blob is served for a name (stored or filled) only when a stored manifest of that name
 * references it: stored manifests there passed the policy, so no byte of an image it refused is fetched, even for a
 * client that asks for its blobs by digest without its manifest. One store read per blob request under `enforce`.
 * @throws RegistryError `DENIED`.
 */
export async function admitBlob(deps: RegistryDeps, resolved: ResolvedName, digest: Digest): Promise<void> {
  const lifecycle = deps.stores.lifecycle;
  if (policyFor(resolved.rule, resolved.upstreamRepository)?.mode !== 'enforce' || !lifecycle) return;
  if (await lifecycle.referencedBy(digest, resolved.rule.prefix, resolved.name)) return;
  throw new RegistryError('DENIED', `signature policy of rule ${resolved.rule.prefix}: no verified manifest of this repository references the blob`);
}

/** The signature policy's checks, used by the manifest service. */
export interface SignatureCheck {
  /**
   * The verdict on a manifest just fetched (not stored yet), to store with it; undefined when no policy covers it.
   * @throws RegistryError `DENIED` when the policy refuses it; `UpstreamError` when the upstream cannot answer.
   */
  judgeNew(resolved: ResolvedName, record: ManifestRecord): Promise<ManifestVerification | undefined>;
  /** After a verified index was stored: the coverage markers of its platform manifests. */
  stored(resolved: ResolvedName, record: ManifestRecord): Promise<void>;
  /**
   * A stored manifest as it may be served: as it is when its verdict stands under the current policy, else
   * verified again (the new verdict recorded, index coverage written).
   * @throws as {@link judgeNew}.
   */
  admitStored(resolved: ResolvedName, record: ManifestRecord): Promise<ManifestRecord>;
}

/** Creates the checks over the registry's stores, upstreams, log and clock. */
export function createSignatureCheck(deps: RegistryDeps): SignatureCheck {
  const refused = createNegativeCache<SignatureFailure>(() => deps.now());
  // Concurrent pulls of a stored manifest whose verdict must be made again make it once.
  const flights = createSingleFlight();

  function refusal(resolved: ResolvedName, reason: SignatureFailure): RegistryError {
    return new RegistryError('DENIED', `signature policy of rule ${resolved.rule.prefix}: ${WHY[reason]}`);
  }

  /** A verdict made: the log line, the metric, and the request's note. */
  function made(resolved: ResolvedName, record: ManifestRecord, result: VerifyResult, v: Partial<ManifestVerification>): void {
    noteVerify(result);
    deps.metrics?.verification({ rule: resolved.rule.prefix, result });
    const line = { event: 'verify', rule: resolved.rule.prefix, name: resolved.name, digest: record.digest, result, ...v };
    if (result === 'verified' || result === 'exempt') deps.log.info('signature policy', line);
    else deps.log.warn('signature policy', line);
  }

  /** The verdict, from the material alone when it can be (exempt, covered by a verified index), else from the upstream. */
  async function verdict(resolved: ResolvedName, record: ManifestRecord, policy: SignaturePolicy): Promise<Omit<ManifestVerification, 'at' | 'keySet'>> {
    if (!isIndexMediaType(record.mediaType) && isSignatureArtifact(record.body)) return { result: 'exempt' };
    const marker = await deps.stores.listings.getListing(resolved.name, coverageKey(record.digest));
    const cover = marker && (JSON.parse(marker.body) as { index?: string; keySet?: string });
    if (cover?.keySet === policy.keySet && cover.index) return { result: 'verified', via: `index ${cover.index}` };
    const found = await checkSignatures(deps.upstreamFor(resolved.rule), resolved.upstreamRepository, record, policy.keys);
    return found.verified ? { result: 'verified', via: found.via, keyId: found.keyId } : { result: 'unsigned', reason: found.reason };
  }

  async function judge(resolved: ResolvedName, record: ManifestRecord, policy: SignaturePolicy): Promise<ManifestVerification> {
    const key = `${resolved.name}\n${record.digest}\n${policy.keySet}`;
    const remembered = refused.get(key);
    if (remembered) {
      noteVerify('refused');
      throw refusal(resolved, remembered);
    }
    const v: ManifestVerification = { ...(await verdict(resolved, record, policy)), keySet: policy.keySet, at: deps.now() };
    if (v.result === 'unsigned' && policy.mode === 'enforce') {
      const reason = v.reason ?? 'unsigned';
      made(resolved, record, 'refused', { reason });
      refused.remember(key, resolved.rule.negativeCacheSeconds * 1000, reason);
      throw refusal(resolved, reason);
    }
    made(resolved, record, v.result, v);
    return v;
  }

  async function stored(resolved: ResolvedName, record: ManifestRecord): Promise<void> {
    const v = record.verification;
    if (v?.result !== 'verified' || !isIndexMediaType(record.mediaType)) return;
    const body = JSON.stringify({ index: record.digest, keySet: v.keySet });
    for (const child of indexChildren(record.body, MAX_COVERED)) await deps.stores.listings.putListing(resolved.name, coverageKey(child), body);
  }

  return {
    async judgeNew(resolved, record) {
      const policy = policyFor(resolved.rule, resolved.upstreamRepository);
      return policy && judge(resolved, record, policy);
    },
    stored,
    async admitStored(resolved, record) {
      const policy = policyFor(resolved.rule, resolved.upstreamRepository);
      const v = record.verification;
      if (!policy) return record;
      if (v?.keySet === policy.keySet && (v.result !== 'unsigned' || policy.mode === 'warn')) {
        noteVerify(v.result);
        return record;
      }
      return flights.run(`${record.name}@${record.digest}\n${policy.keySet}`, async () => {
        const verification = await judge(resolved, record, policy);
        await deps.stores.manifests.recordVerification(record.name, record.digest, verification);
        const updated = { ...record, verification };
        await stored(resolved, updated);
        return updated;
      });
    },
  };
}
