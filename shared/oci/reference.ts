/**
 * Repository name and tag grammar (OCI distribution spec, "Pulling manifests"):
 * name `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
 * tag `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. Everything is checked before any storage key or upstream URL is built.
 */
import { RegistryError } from './errors.js';
import { assertDigest, looksLikeDigest, type Digest } from './digest.js';

const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

/** Longest name we accept, in characters (distribution limits the whole name to 255). */
export const MAX_NAME_LENGTH = 255;

/** True when `name` matches the spec's repository-name grammar and length limit. */
export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

/** True when `tag` matches the spec's tag grammar (at most 128 characters). */
export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

/**
 * @throws RegistryError `NAME_INVALID` (400) when the name breaks the grammar.
 */
export function assertName(name: string): string {
  if (!isValidName(name)) throw new RegistryError('NAME_INVALID', 'invalid repository name', { detail: { name: name.slice(0, 300) } });
  return name;
}

/** A manifest reference: a tag or a digest. */
export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: Digest };

/**
 * Parses a manifest reference. Called before any upstream request or storage key is built.
 * @throws RegistryError `DIGEST_INVALID` (400) for a malformed digest; `MANIFEST_UNKNOWN` (404) for a reference
 *   that is neither a digest nor a valid tag: it names nothing that can exist, so it is unknown rather than a
 *   malformed request (distribution's router answers 404 too, and the OCI conformance suite's pull workflow
 *   requires 404 for `GET`/`HEAD /v2/<name>/manifests/.INVALID_MANIFEST_NAME`).
 */
export function parseReference(reference: string): Reference {
  if (looksLikeDigest(reference)) return { kind: 'digest', digest: assertDigest(reference) };
  if (!isValidTag(reference)) throw new RegistryError('MANIFEST_UNKNOWN', 'no manifest can have this reference: it is not a valid tag or digest', { detail: { tag: reference.slice(0, 200) } });
  return { kind: 'tag', tag: reference };
}
