/**
 * Deterministic generator of hostile registry requests: random and crafted methods, paths, names, references,
 * digests, query strings and headers, mixed with valid names of cached repositories so that hostile requests
 * also reach cached data. Seeded (mulberry32), so a failure is replayed with the same seed.
 *
 * Valid-but-uncached names are safe to send as long as every upstream the rules point at is reached by one rule
 * only and everything it holds is cached: then any valid name either maps to a cached repository or to one its
 * upstream does not know (404, nothing stored).
 */

/** A request as a client could send it: raw (still percent-encoded) path, raw query string, headers. */
export interface HostileRequest {
  method: string;
  path: string;
  query: string;
  headers: Record<string, string>;
}

/** A name that reaches a cached repository (optionally via containerd's `?ns=`), and what is cached there. */
export interface CachedTarget {
  name: string;
  ns?: string;
  tags: string[];
  manifestDigests: string[];
  blobDigests: string[];
}

/** What the generator mixes into its requests. */
export interface HostileTargets {
  cached: CachedTarget[];
  /** Rule prefixes (valid names get them, or not). */
  prefixes: string[];
  /** `ns` values the rules serve (upstream hosts, `docker.io`). */
  nsHosts: string[];
}

/** mulberry32: a small, fast, seedable PRNG; returns floats in [0, 1). */
export function createRandom(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)];
  const chance = (p: number) => next() < p;
  const chars = (alphabet: string, n: number) => Array.from({ length: n }, () => alphabet[Math.floor(next() * alphabet.length)]).join('');
  return { next, int, pick, chance, chars };
}
export type Random = ReturnType<typeof createRandom>;

const LOWER = 'abcdefghijklmnopqrstuvwxyz0123456789';
const TAG_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-';
const HEX = '0123456789abcdef';
/** Characters for garbage: path-special, percent, unicode (combining, RTL override, fullwidth, emoji, lone surrogate). */
const GARBAGE = [...'aZ09-_.~/\\%:@;,=+*$!\'"<>{}|^` \t', '%2F', '%2f', '%2e', '%2E%2E', '%00', '%25', '%ZZ', '%', 'é', 'İ', 'ſ', 'ａ', '\u202e', '\u0301', '🐳', '\ud800', '\u0000', '\r\n'];

export const hex = (rnd: Random, n: number) => rnd.chars(HEX, n);
export const sha256Of = (rnd: Random) => `sha256:${hex(rnd, 64)}`;

/** A name component following the grammar `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`. */
function component(rnd: Random): string {
  let s = rnd.chars(LOWER, rnd.int(1, 6));
  while (rnd.chance(0.3)) s += rnd.pick(['.', '_', '__', '-', '--']) + rnd.chars(LOWER, rnd.int(1, 5));
  return s;
}

/** A valid name: under a rule prefix, bare (mirror style), or under an unknown first component. */
export function validName(rnd: Random, t: HostileTargets): string {
  const parts = Array.from({ length: rnd.int(1, 3) }, () => component(rnd));
  const r = rnd.next();
  return r < 0.6 ? `${rnd.pick(t.prefixes)}/${parts.join('/')}` : r < 0.8 ? parts.join('/') : `${component(rnd)}/${parts.join('/')}`;
}

/** A valid tag of 1..128 characters. */
export function validTag(rnd: Random, len = rnd.chance(0.1) ? 128 : rnd.int(1, 20)): string {
  return rnd.chars(`${TAG_CHARS.slice(0, 63)}`, 1) + rnd.chars(TAG_CHARS, len - 1);
}

/** Invalid and odd digests: wrong lengths, uppercase, other algorithms, encoded colons, unicode. */
export function oddDigest(rnd: Random): string {
  const h = hex(rnd, 64);
  return rnd.pick([
    `sha256:${h.slice(1)}`, `sha256:${h}0`, `sha256:${h.toUpperCase()}`, `SHA256:${h}`, `sha256:${'g'.repeat(64)}`,
    `sha512:${h}`, `sha384:${hex(rnd, 96)}`, `md5:${hex(rnd, 32)}`, `sha256:`, `:${h}`, `sha256`, `sha256%3A${h}`,
    `sha256:${h}%00`, `sha256:${h.slice(0, 60)}é`, `sha256+b64:${h}`, `sha256:${h}:${h}`, `sha256::${h}`,
    `sha256:${h} `, ` sha256:${h}`, `sha256:${'0'.repeat(10_000)}`, `sha256:..%2f..%2f${h}`,
  ]);
}

/** A name turned hostile: uppercase, dot segments, encoded slashes, empty parts, unicode, over-long. */
export function mutateName(rnd: Random, name: string): string {
  const at = rnd.int(0, name.length);
  const insert = (s: string) => name.slice(0, at) + s + name.slice(at);
  switch (rnd.int(0, 13)) {
    case 0: return name.replace(/[a-z]/, (c) => c.toUpperCase());
    case 1: return insert(rnd.pick(['/../', '/./', '/..', '/.', '..', '.']));
    case 2: return insert(rnd.pick(['%2F', '%2f', '%2e%2e', '%2E', '%2e%2e%2f', '%252F', '%5C']));
    case 3: return insert(rnd.pick(['//', '/', '\\', '%00', '\u0000', ' ', '%20', '\t']));
    case 4: return `${name}/`;
    case 5: return `/${name}`;
    case 6: return insert(rnd.pick(GARBAGE));
    case 7: return 'a'.repeat(10_240);
    case 8: return rnd.chars('ab/%.-_\\', 10_240);
    case 9: return `${name.split('/')[0]}/${'a'.repeat(256)}`;
    case 10: return '';
    case 11: return insert(rnd.pick(['-', '_', '___', '.-', '--.', '__.']));
    case 12: return name.split('').map((c) => (rnd.chance(0.3) ? encodeURIComponent(c).replace(/^[a-z0-9]$/, (x) => `%${x.charCodeAt(0).toString(16)}`) : c)).join('');
    default: return Array.from({ length: rnd.int(1, 8) }, () => rnd.pick(GARBAGE)).join('');
  }
}

const OTHER_METHODS = ['PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT', 'G3T', 'get', 'head', '', 'PROPFIND', 'GET\r\nX: y'];
/** Mostly reads (they reach the cache), a fifth anything else. */
const method = (rnd: Random) => (rnd.chance(0.6) ? 'GET' : rnd.chance(0.5) ? 'HEAD' : rnd.pick(OTHER_METHODS));

/** Whole paths that are odd on their own (no name template). */
function oddPath(rnd: Random): string {
  return rnd.pick([
    '/', '', '/v2', '/v2/', '/v2//', '/V2/', '/v2/_catalog', '/v2/_catalog/', '/v2/_catalog/x', '/v3/local/x/manifests/v1',
    '/v2/../v2/', '/v2/%2e%2e/%2e%2e/etc/passwd', '//v2/', '/v2/x/manifests/', '/v2/x/blobs/', '/v2/manifests/latest',
    '/v2/tags/list', '/v2//tags/list', '/v2//manifests/x', '/v2/blobs/uploads/', '/v2/x/blobs/uploads', '/_blobs/sha256/00',
    `/v2/${'a/'.repeat(2000)}manifests/v1`, `/v2/${rnd.chars('a/%', 10_240)}`, '*', 'http://evil.example/v2/', '/v2/\u0000/manifests/x',
    '/v2/x/referrers/', '/v2/x/tags/list/extra', '/v2/x/manifests/v1/', '/v2/x/blobs/uploads/a/b',
  ]);
}

function reference(rnd: Random, target: CachedTarget | undefined): string {
  const r = rnd.next();
  if (target && r < 0.25) return rnd.pick([...target.tags, ...target.manifestDigests]);
  if (target && r < 0.3) return rnd.pick(target.blobDigests); // a blob digest on the manifests route
  if (r < 0.45) return validTag(rnd);
  if (r < 0.55) return rnd.pick([validTag(rnd, 128), `${validTag(rnd, 128)}x`, 'x'.repeat(129), 'x'.repeat(10_240)]);
  if (r < 0.65) return rnd.pick([sha256Of(rnd), `sha512:${hex(rnd, 128)}`]);
  if (r < 0.8) return oddDigest(rnd);
  return rnd.pick(['', '.', '..', '%2e%2e', '-x', '.x', 'v1:x', 'v1@sha256:' + hex(rnd, 64), '@v1', 'v1%2Fx', 'latest%00', 'lätest', 'v1\\x', '🐳', '\ud800', 'v 1']);
}

function blobDigest(rnd: Random, target: CachedTarget | undefined, all: HostileTargets): string {
  const r = rnd.next();
  if (target && r < 0.3) return rnd.pick(target.blobDigests);
  if (target && r < 0.45) return rnd.pick(target.manifestDigests); // manifests on the blobs route
  if (r < 0.55) return rnd.pick(rnd.pick(all.cached).blobDigests); // another repository's blob
  if (r < 0.7) return rnd.chance(0.8) ? sha256Of(rnd) : `sha512:${hex(rnd, 128)}`;
  return oddDigest(rnd);
}

function queryString(rnd: Random, t: HostileTargets): string {
  if (rnd.chance(0.45)) return '';
  if (rnd.chance(0.05)) return rnd.pick(['%', '%%', '%zz', '&&&', '=', '==&=', 'a=b=c', '%E0%A4%A', 'n', '?n=1', '\u0000=\u0000', '#frag', rnd.chars('%&=+;a', 2000)]);
  const params: string[] = [];
  for (let i = rnd.int(1, 4); i > 0; i--) {
    params.push(
      rnd.pick([
        () => `n=${rnd.pick(['-1', 'abc', '99999999999', '0', '1', '2', '1000', '', '1.5', '+1', '0x10', '1e3', ' 1', '00000001', '%31'])}`,
        () => `last=${rnd.pick(['', 'v1', '1.0', 'zzz', '%00', '%2F..%2F', 'é', encodeURIComponent(validTag(rnd)), 'a'.repeat(300), 'a'.repeat(10_240), '\'%20OR%201=1--'])}`,
        () => `ns=${rnd.pick([...t.nsHosts, '', 'registry.example.com', 'DOCKER.IO', 'http://evil', '127.0.0.1', 'a'.repeat(5000), '%2F', 'docker.io%00'])}`,
        () => `pt-hop=${rnd.pick(['-5', 'abc', '1e9', '0', '3', '8', '9', '', 'Infinity', 'NaN', '0x1', '1.5', '99999999999999999999'])}`,
        () => `artifactType=${rnd.pick(['application/vnd.example', '', '%00', 'a'.repeat(3000)])}`,
        () => `${rnd.pick(['n', 'last', 'ns', 'pt-hop'])}=${rnd.pick(['1', 'x'])}&${rnd.pick(['n', 'last', 'ns', 'pt-hop'])}=${rnd.pick(['abc', '-1', '', 'docker.io'])}`,
        () => `${rnd.chars('abc%=&', rnd.int(1, 12))}`,
      ])(),
    );
  }
  return params.join('&');
}

const HEADER_POOL: Array<(rnd: Random) => [string, string]> = [
  () => ['Accept', Array.from({ length: 3000 }, (_, i) => `application/vnd.x${i}+json;q=0.${i % 10}`).join(', ')],
  (rnd) => ['Accept', rnd.pick(['*/*', '', 'text/html', 'application/vnd.oci.image.manifest.v1+json;q=abc', '\u0000', ';;;,,,'])],
  (rnd) => ['Range', rnd.pick(['bytes=garbage', 'bytes=-1', 'bytes=0-', 'bytes=5-1', `bytes=${'0-1,'.repeat(2000)}`, 'items=0-1', 'bytes=99999999999999999999-'])],
  (rnd) => ['Authorization', rnd.pick(['Bearer ', 'Bearer x.y.z', 'Basic !!!', 'Basic ' + Buffer.from('a:b').toString('base64'), `Bearer ${'A'.repeat(16_384)}`, 'Negotiate', '\u0000'])],
  (rnd) => ['Host', rnd.pick(['', 'evil.example', 'a'.repeat(1000), '[::1]:0', 'localhost:99999'])],
  (rnd) => ['X-Forwarded-For', rnd.pick(['1.2.3.4, 5.6.7.8', 'garbage', ''])],
  (rnd) => ['Content-Length', rnd.pick(['-1', '99999999999', 'abc'])],
  () => ['Transfer-Encoding', 'chunked'],
  (rnd) => ['If-None-Match', rnd.pick(['*', '"sha256:00"', 'W/"x"'])],
  (rnd) => ['Docker-Distribution-API-Version', rnd.pick(['registry/2.0', 'garbage'])],
];

/** One random hostile request. */
export function randomRequest(rnd: Random, t: HostileTargets): HostileRequest {
  const m = method(rnd);
  const headers: Record<string, string> = {};
  for (let i = rnd.chance(0.6) ? 0 : rnd.int(1, 3); i > 0; i--) {
    const [k, v] = rnd.pick(HEADER_POOL)(rnd);
    headers[rnd.chance(0.5) ? k : k.toLowerCase()] = v;
  }
  let query = queryString(rnd, t);
  if (rnd.chance(0.08)) return { method: m, path: oddPath(rnd), query, headers };

  // The name: a cached repository (as is, or made hostile), or a valid name nobody has.
  let target: CachedTarget | undefined;
  let name: string;
  const r = rnd.next();
  if (r < 0.55) {
    target = rnd.pick(t.cached);
    name = target.name;
    if (target.ns !== undefined) query = query ? `${query}&ns=${encodeURIComponent(target.ns)}` : `ns=${encodeURIComponent(target.ns)}`;
    if (rnd.chance(0.35)) {
      name = mutateName(rnd, name);
      target = undefined;
    }
  } else if (r < 0.8) {
    name = validName(rnd, t);
  } else {
    name = mutateName(rnd, validName(rnd, t));
  }

  const kind = rnd.next();
  const tail =
    kind < 0.4 ? `manifests/${reference(rnd, target)}`
    : kind < 0.72 ? `blobs/${blobDigest(rnd, target, t)}`
    : kind < 0.82 ? 'tags/list'
    : kind < 0.88 ? `referrers/${rnd.chance(0.5) && target ? rnd.pick(target.manifestDigests) : rnd.chance(0.5) ? sha256Of(rnd) : oddDigest(rnd)}`
    : kind < 0.94 ? rnd.pick(['blobs/uploads/', 'blobs/uploads', `blobs/uploads/${hex(rnd, 8)}-${hex(rnd, 4)}`, `blobs/uploads/?digest=${sha256Of(rnd)}`])
    : rnd.pick(['manifests/', 'blobs/', 'manifests', 'tags/list/', 'tags', 'referrers', '_catalog', '']);
  return { method: m, path: `/v2/${name}/${tail}`.replace(/\?.*$/, ''), query, headers };
}
