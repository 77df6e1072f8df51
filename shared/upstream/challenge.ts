/**
 * Parses a `WWW-Authenticate` challenge (RFC 7235 §4.1; Docker token auth spec "How to authenticate").
 * Only the first challenge is used: registries send one.
 */

/** A parsed challenge: scheme lower-cased, parameter names lower-cased. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

const PARAM_RE = /([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))/g;

/** Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`; undefined when empty. */
export function parseChallenge(header: string | null | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of m[2].matchAll(PARAM_RE)) params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  return { scheme: m[1].toLowerCase(), params };
}
