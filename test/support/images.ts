/**
 * Builds REAL container images from files on this machine and pushes them to
 * a registry with the distribution HTTP API, so media types and bytes are
 * fully under the test's control.
 *
 * Layers are deterministic gzip'd ustar/PAX archives written by a small tar
 * writer below (sorted entries, uid/gid 0, mtime 0, real file content and
 * modes), so the same sources give the same layer digests on one machine.
 * Built layers are cached as files in the per-process scratch dir (./scratch.ts).
 */
import { createHash } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  existsSync,
  lstatSync,
  statSync,
  readdirSync,
  readlinkSync,
  type Stats,
} from 'node:fs';
import http from 'node:http';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { scratchDir } from './scratch.js';

// ---------------------------------------------------------------------------
// Media types

/** Media types used by the pushers. */
export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

/** Image format: OCI (image manifest / image index) or Docker schema2 (manifest v2 / manifest list). */
export type ImageFormat = 'oci' | 'docker';
/** Supported architectures (os is always linux). */
export type Arch = 'amd64' | 'arm64';

/**
 * A manifest pushed to a registry.
 * - `digest`: `sha256:<hex>` of `manifest` (the exact bytes PUT and verified by GET).
 * - `blobs`: for an image, config + layers (sizes in bytes, compressed); for an
 *   index/list, the de-duplicated union of its children's blobs.
 * - `children`: per-platform images of an index/list (pushed by digest, `tag` is the parent's tag).
 * - `platform`: set on children and single-platform images.
 */
export type PushedImage = {
  name: string;
  tag: string;
  digest: string;
  mediaType: string;
  manifest: Buffer;
  blobs: Array<{ digest: string; size: number }>;
  children?: PushedImage[];
  platform?: { architecture: string; os: string };
};

/** Registry credentials `user:password` for Basic auth (optional on every pusher). */
export type PushAuth = { creds?: string };

/** A built, gzip'd layer stored as a file. Sizes in bytes. */
export interface BuiltLayer {
  /** sha256 of the compressed bytes (the blob digest) */
  digest: string;
  /** compressed size */
  size: number;
  /** sha256 of the uncompressed tar */
  diffId: string;
  /** uncompressed tar size */
  uncompressedSize: number;
  /** path of the .tar.gz file */
  path: string;
  /** human label: the sources that went in */
  label: string;
}

// ---------------------------------------------------------------------------
// Deterministic tar writer

type TarEntry =
  | { kind: 'dir'; name: string; mode: number }
  | { kind: 'file'; name: string; mode: number; size: number; source: string }
  | { kind: 'symlink'; name: string; mode: number; target: string }
  | { kind: 'data'; name: string; mode: number; data: Buffer };

const BLOCK = 512;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

function octal(n: number, width: number): string {
  // width includes the trailing NUL
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

function header(name: string, mode: number, size: number, type: string, linkname = ''): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(name, 0, 100, 'utf8');
  b.write(octal(mode & 0o7777, 8), 100, 'ascii');
  b.write(octal(0, 8), 108, 'ascii'); // uid
  b.write(octal(0, 8), 116, 'ascii'); // gid
  b.write(octal(size, 12), 124, 'ascii');
  b.write(octal(0, 12), 136, 'ascii'); // mtime: 0 for reproducibility
  b.fill(' ', 148, 156); // checksum placeholder
  b.write(type, 156, 1, 'ascii');
  b.write(linkname, 157, 100, 'utf8');
  b.write('ustar\0', 257, 'ascii');
  b.write('00', 263, 'ascii');
  b.write('root', 265, 'ascii');
  b.write('root', 297, 'ascii');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i];
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return b;
}

function pad(size: number): Buffer {
  const r = size % BLOCK;
  return r === 0 ? Buffer.alloc(0) : Buffer.alloc(BLOCK - r);
}

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

/** Header blocks for an entry, with a PAX extended header when a name/link does not fit ustar. */
function entryHeaders(name: string, mode: number, size: number, type: string, linkname = ''): Buffer[] {
  const out: Buffer[] = [];
  const tooLong = (s: string) => Buffer.byteLength(s) > 99 || /[^\x20-\x7e]/.test(s);
  if (tooLong(name) || tooLong(linkname)) {
    let pax = '';
    if (tooLong(name)) pax += paxRecord('path', name);
    if (tooLong(linkname)) pax += paxRecord('linkpath', linkname);
    const data = Buffer.from(pax, 'utf8');
    out.push(header('PaxHeaders/' + name.slice(-80).replace(/[^\x20-\x7e]/g, '_'), 0o644, data.length, 'x'), data, pad(data.length));
    name = name.slice(0, 99).replace(/[^\x20-\x7e]/g, '_');
    linkname = linkname.slice(0, 99).replace(/[^\x20-\x7e]/g, '_');
  }
  out.push(header(name, mode, size, type, linkname));
  return out;
}

async function* tarStream(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): AsyncGenerator<Buffer> {
  for await (const e of entries) {
    switch (e.kind) {
      case 'dir':
        yield* entryHeaders(e.name.endsWith('/') ? e.name : e.name + '/', e.mode, 0, '5');
        break;
      case 'symlink':
        yield* entryHeaders(e.name, e.mode, 0, '2', e.target);
        break;
      case 'data':
        yield* entryHeaders(e.name, e.mode, e.data.length, '0');
        yield e.data;
        yield pad(e.data.length);
        break;
      case 'file': {
        yield* entryHeaders(e.name, e.mode, e.size, '0');
        let n = 0;
        for await (const chunk of createReadStream(e.source, { highWaterMark: 1 << 20 })) {
          const c = chunk as Buffer;
          // Never write more than announced if the file grew meanwhile.
          const take = Math.min(c.length, e.size - n);
          if (take > 0) yield take === c.length ? c : c.subarray(0, take);
          n += take;
        }
        if (n < e.size) yield Buffer.alloc(e.size - n); // file shrank: keep the archive valid
        yield pad(e.size);
        break;
      }
    }
  }
  yield ZERO_BLOCK;
  yield ZERO_BLOCK;
}

/**
 * Regular file, directory or symlink entries for `src` (file or dir), recursively, sorted,
 * named by absolute path without the leading '/'. A symlink given as `src` itself is
 * followed; symlinks below it are stored as symlinks.
 */
function* walk(src: string, skip?: (abs: string, st: Stats) => boolean, top = true): Generator<TarEntry> {
  let st: Stats;
  try {
    st = top ? statSync(src) : lstatSync(src);
  } catch {
    return;
  }
  const name = src.replace(/^\/+/, '');
  if (skip?.(src, st)) return;
  if (st.isSymbolicLink()) {
    yield { kind: 'symlink', name, mode: 0o777, target: readlinkSync(src) };
  } else if (st.isFile()) {
    yield { kind: 'file', name, mode: st.mode, size: st.size, source: src };
  } else if (st.isDirectory()) {
    yield { kind: 'dir', name, mode: st.mode };
    let kids: string[];
    try {
      kids = readdirSync(src).sort();
    } catch {
      return;
    }
    for (const k of kids) yield* walk(join(src, k), skip, false);
  }
  // sockets, fifos, devices: skipped
}

/** The parent directories of `src` as dir entries (so layers extract with sane modes). */
function parentDirs(src: string): TarEntry[] {
  const out: TarEntry[] = [];
  let d = dirname(src);
  while (d !== '/' && d !== '.') {
    out.unshift({ kind: 'dir', name: d.replace(/^\/+/, ''), mode: 0o755 });
    d = dirname(d);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Layer building & cache

let cacheDir: string | undefined;
function layerCacheDir(): string {
  cacheDir ??= scratchDir('layers-');
  return cacheDir;
}
const layerCache = new Map<string, Promise<BuiltLayer>>();
let layerSeq = 0;

function counter(onChunk: (c: Buffer) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onChunk(chunk);
      cb(null, chunk);
    },
  });
}

/**
 * Writes a gzip'd tar of `entries` to a new file in the layer cache dir.
 * `entries` receives a getter of the compressed bytes written so far (lags by
 * at most a zlib buffer), so a generator can stop at a size target.
 */
async function buildLayerFile(
  label: string,
  entries: (compressedSoFar: () => number) => AsyncIterable<TarEntry> | Iterable<TarEntry>,
  level = 6,
): Promise<BuiltLayer> {
  const path = join(layerCacheDir(), `layer-${process.pid}-${++layerSeq}.tar.gz`);
  const uHash = createHash('sha256');
  const cHash = createHash('sha256');
  let uSize = 0;
  let cSize = 0;
  await pipeline(
    Readable.from(tarStream(entries(() => cSize))),
    counter((c) => {
      uHash.update(c);
      uSize += c.length;
    }),
    // Node's gzip header has mtime 0 and no file name: deterministic.
    zlib.createGzip({ level }),
    counter((c) => {
      cHash.update(c);
      cSize += c.length;
    }),
    createWriteStream(path),
  );
  return {
    digest: `sha256:${cHash.digest('hex')}`,
    size: cSize,
    diffId: `sha256:${uHash.digest('hex')}`,
    uncompressedSize: uSize,
    path,
    label,
  };
}

/**
 * One gzip'd tar layer with every entry under each of `sources` (absolute files
 * or dirs, named by absolute path) plus `extra` generated files (`name` relative
 * to /, mode 0644). Cached per process by (sources, extra). Rejects if a source is missing.
 */
export function buildLayer(sources: string[], extra: Array<{ name: string; data: string | Buffer }> = []): Promise<BuiltLayer> {
  const abs = sources.map((s) => resolvePath(s));
  const key = JSON.stringify({ abs, extra: extra.map((e) => [e.name, createHash('sha256').update(e.data).digest('hex')]) });
  let p = layerCache.get(key);
  if (!p) {
    const missing = abs.find((s) => !existsSync(s));
    if (missing) return Promise.reject(new Error(`layer source does not exist: ${missing}`));
    p = buildLayerFile(abs.join(' ') || 'generated', function* () {
      const seenDirs = new Set<string>();
      const emitDir = function* (e: TarEntry) {
        if (e.kind === 'dir') {
          if (seenDirs.has(e.name)) return;
          seenDirs.add(e.name);
        }
        yield e;
      };
      for (const s of abs) {
        for (const d of parentDirs(s)) yield* emitDir(d);
        for (const e of walk(s)) yield* emitDir(e);
      }
      for (const x of extra) {
        const name = x.name.replace(/^\/+/, '');
        for (const d of parentDirs('/' + name)) yield* emitDir(d);
        yield { kind: 'data', name, mode: 0o644, data: Buffer.isBuffer(x.data) ? x.data : Buffer.from(x.data) };
      }
    });
    layerCache.set(key, p);
    p.catch(() => layerCache.delete(key));
  }
  return p;
}

// ---------------------------------------------------------------------------
// Registry HTTP

interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function request(
  url: string,
  init: { method: string; headers?: Record<string, string | number>; body?: Buffer | string; bodyFile?: string; creds?: string },
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...(init.headers ?? {}) };
    if (init.creds) headers['authorization'] = 'Basic ' + Buffer.from(init.creds).toString('base64');
    const req = http.request(url, { method: init.method, headers, timeout: 120_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${init.method} ${url}`)));
    req.on('error', reject);
    if (init.bodyFile) {
      const rs = createReadStream(init.bodyFile);
      rs.on('error', (e) => req.destroy(e));
      rs.pipe(req);
    } else {
      req.end(init.body);
    }
  });
}

function fail(what: string, r: HttpResult): never {
  throw new Error(`${what}: HTTP ${r.status} ${r.body.toString('utf8').slice(0, 500)}`);
}

const base = (registryUrl: string) => registryUrl.replace(/\/+$/, '');

/** Uploads one blob (monolithic POST + PUT ?digest=) unless HEAD says it exists. Body: a Buffer or a file path. */
export async function pushBlob(
  registryUrl: string,
  name: string,
  blob: { digest: string; size: number; data?: Buffer; path?: string },
  auth: PushAuth = {},
): Promise<void> {
  const b = base(registryUrl);
  const head = await request(`${b}/v2/${name}/blobs/${blob.digest}`, { method: 'HEAD', creds: auth.creds });
  if (head.status === 200) return;
  const start = await request(`${b}/v2/${name}/blobs/uploads/`, {
    method: 'POST',
    headers: { 'content-length': 0 },
    creds: auth.creds,
  });
  if (start.status !== 202) fail(`POST blob upload ${name}`, start);
  const loc = start.headers.location;
  if (!loc) throw new Error('upload start returned no Location');
  const putUrl = new URL(loc, b + '/');
  putUrl.searchParams.set('digest', blob.digest);
  const put = await request(putUrl.toString(), {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream', 'content-length': blob.size },
    body: blob.data,
    bodyFile: blob.data ? undefined : blob.path,
    creds: auth.creds,
  });
  if (put.status !== 201) fail(`PUT blob ${blob.digest} to ${name}`, put);
  if (put.headers['docker-content-digest'] && put.headers['docker-content-digest'] !== blob.digest) {
    throw new Error(`registry stored ${put.headers['docker-content-digest']} for ${blob.digest}`);
  }
}

/**
 * PUTs manifest bytes under `ref` (tag or digest) with Content-Type `mediaType`,
 * then GETs it back and checks Docker-Content-Digest, Content-Type and bytes.
 * Returns the digest (`sha256:<hex>` of `bytes`).
 */
export async function pushManifest(
  registryUrl: string,
  name: string,
  ref: string,
  mediaType: string,
  bytes: Buffer,
  auth: PushAuth = {},
): Promise<string> {
  const b = base(registryUrl);
  const digest = sha256(bytes);
  const put = await request(`${b}/v2/${name}/manifests/${ref}`, {
    method: 'PUT',
    headers: { 'content-type': mediaType, 'content-length': bytes.length },
    body: bytes,
    creds: auth.creds,
  });
  if (put.status !== 201) fail(`PUT manifest ${name}:${ref}`, put);
  const got = await request(`${b}/v2/${name}/manifests/${ref}`, {
    method: 'GET',
    headers: { accept: mediaType },
    creds: auth.creds,
  });
  if (got.status !== 200) fail(`GET manifest ${name}:${ref}`, got);
  if (got.headers['docker-content-digest'] !== digest) {
    throw new Error(`manifest ${name}:${ref}: registry says ${got.headers['docker-content-digest']}, computed ${digest}`);
  }
  if (got.headers['content-type'] !== mediaType) {
    throw new Error(`manifest ${name}:${ref}: registry serves Content-Type ${got.headers['content-type']}, pushed ${mediaType}`);
  }
  if (!got.body.equals(bytes)) throw new Error(`manifest ${name}:${ref}: bytes differ after round trip`);
  return digest;
}

/** `sha256:<hex>` of `data`. */
export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

// ---------------------------------------------------------------------------
// Image assembly

/** Docker-Hub-like 3-space indentation: manifests are not in canonical form, so a cache that re-serialises them is caught. */
const encodeJson = (v: unknown) => Buffer.from(JSON.stringify(v, null, 3));

interface ComposedImage {
  mediaType: string;
  manifest: Buffer;
  digest: string;
  config: Buffer;
  configDigest: string;
  layers: BuiltLayer[];
  arch: Arch;
}

/** Builds config + manifest bytes for `layers` (no I/O). */
function composeImage(name: string, format: ImageFormat, arch: Arch, layers: BuiltLayer[]): ComposedImage {
  const config = {
    architecture: arch,
    os: 'linux',
    created: '1970-01-01T00:00:00Z',
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Cmd: ['/bin/sh'],
      Labels: { 'org.opencontainers.image.title': name },
    },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((l) => ({
      created: '1970-01-01T00:00:00Z',
      created_by: `pullthrough test layer: ${l.label}`.slice(0, 200),
    })),
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDigest = sha256(configBytes);
  const layerType = format === 'oci' ? MediaTypes.ociLayerGzip : MediaTypes.dockerLayerGzip;
  const mediaType = format === 'oci' ? MediaTypes.ociManifest : MediaTypes.dockerManifest;
  const manifest = encodeJson({
    schemaVersion: 2,
    mediaType,
    config: {
      mediaType: format === 'oci' ? MediaTypes.ociConfig : MediaTypes.dockerConfig,
      size: configBytes.length,
      digest: configDigest,
    },
    layers: layers.map((l) => ({ mediaType: layerType, size: l.size, digest: l.digest })),
  });
  return { mediaType, manifest, digest: sha256(manifest), config: configBytes, configDigest, layers, arch };
}

/** Pushes blobs (layers in parallel, then config) and the manifest under `ref`; returns the PushedImage labelled `tag`. */
async function pushComposed(
  registryUrl: string,
  name: string,
  ref: string,
  tag: string,
  img: ComposedImage,
  auth: PushAuth,
): Promise<PushedImage> {
  await Promise.all(
    img.layers.map((l) => pushBlob(registryUrl, name, { digest: l.digest, size: l.size, path: l.path }, auth)),
  );
  await pushBlob(registryUrl, name, { digest: img.configDigest, size: img.config.length, data: img.config }, auth);
  const digest = await pushManifest(registryUrl, name, ref, img.mediaType, img.manifest, auth);
  return {
    name,
    tag,
    digest,
    mediaType: img.mediaType,
    manifest: img.manifest,
    blobs: [
      { digest: img.configDigest, size: img.config.length },
      ...img.layers.map((l) => ({ digest: l.digest, size: l.size })),
    ],
    platform: { architecture: img.arch, os: 'linux' },
  };
}

/** Options for {@link pushSinglePlatformImage}. */
export interface SinglePlatformOptions extends PushAuth {
  format: ImageFormat;
  arch: Arch;
  /** Files or directories (absolute paths); each becomes one layer, entries named by absolute path. */
  layerSources: string[];
  /** Added to every layer as the file `etc/pullthrough-salt`, so images of the same sources get new digests. */
  salt?: string;
}

/**
 * Builds one image (one layer per `layerSources` entry) and pushes it as
 * `name:tag` (OCI image manifest or Docker schema2 manifest).
 */
export async function pushSinglePlatformImage(
  registryUrl: string,
  name: string,
  tag: string,
  opts: SinglePlatformOptions,
): Promise<PushedImage> {
  const extra = opts.salt === undefined ? [] : [{ name: 'etc/pullthrough-salt', data: `${opts.salt}\n` }];
  const layers = await Promise.all(opts.layerSources.map((s) => buildLayer([s], extra)));
  return pushComposed(registryUrl, name, tag, tag, composeImage(name, opts.format, opts.arch, layers), opts);
}

/** First existing path of `candidates`, or undefined. */
function firstExisting(candidates: string[]): string | undefined {
  return candidates.find((c) => existsSync(c));
}

/** Small real directories present on Debian; falls back to Node's own npm install, which exists wherever node does. */
function defaultSharedSources(): string[] {
  const nodeLib = resolvePath(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'lib');
  const a = firstExisting(['/usr/share/common-licenses', '/usr/share/doc/libc6', '/etc/ssl/certs', nodeLib]);
  const b = firstExisting(['/usr/share/zoneinfo', '/usr/share/doc/coreutils', nodeLib]);
  const out = [a, b].filter((x): x is string => !!x);
  return [...new Set(out)];
}

/** Arch-specific layer: a file naming the arch plus, when this machine has them, that arch's real libz files. */
function archLayer(arch: Arch): Promise<BuiltLayer> {
  const triplet = arch === 'amd64' ? 'x86_64-linux-gnu' : 'aarch64-linux-gnu';
  const libdir = `/usr/lib/${triplet}`;
  let libs: string[] = [];
  try {
    libs = readdirSync(libdir)
      .filter((f) => /^libz\.so\.\d/.test(f))
      .sort()
      .map((f) => join(libdir, f));
  } catch {
    /* no such multiarch dir (arm64 on an amd64 machine) */
  }
  return buildLayer(libs, [
    { name: 'etc/pullthrough-arch', data: `linux/${arch}\n` },
    { name: `usr/share/pullthrough/${arch}.txt`, data: `This layer only exists in the linux/${arch} image.\n`.repeat(64) },
  ]);
}

/** Options for {@link pushMultiArchImage}. */
export interface MultiArchOptions extends PushAuth {
  format: ImageFormat;
  /** Shared layers' sources (one layer each); default: two small real dirs (~1-2 MB compressed in total). */
  sharedLayerSources?: string[];
}

/**
 * Pushes linux/amd64 + linux/arm64 images (children by digest) and then an
 * OCI image index (format 'oci', OCI manifests) or a Docker manifest list
 * (format 'docker', schema2 manifests) as `name:tag`. Both children share the
 * same base layers and differ in one arch-specific top layer.
 */
export async function pushMultiArchImage(
  registryUrl: string,
  name: string,
  tag: string,
  opts: MultiArchOptions,
): Promise<PushedImage> {
  const shared = await Promise.all((opts.sharedLayerSources ?? defaultSharedSources()).map((s) => buildLayer([s])));
  const children: PushedImage[] = [];
  for (const arch of ['amd64', 'arm64'] as const) {
    const top = await archLayer(arch);
    const img = composeImage(name, opts.format, arch, [...shared, top]);
    children.push(await pushComposed(registryUrl, name, img.digest, tag, img, opts));
  }
  const mediaType = opts.format === 'oci' ? MediaTypes.ociIndex : MediaTypes.dockerList;
  const manifest = encodeJson({
    schemaVersion: 2,
    mediaType,
    manifests: children.map((c) => ({
      mediaType: c.mediaType,
      size: c.manifest.length,
      digest: c.digest,
      platform: c.platform,
    })),
  });
  const digest = await pushManifest(registryUrl, name, tag, mediaType, manifest, opts);
  const seen = new Map<string, number>();
  for (const c of children) for (const bl of c.blobs) seen.set(bl.digest, bl.size);
  return {
    name,
    tag,
    digest,
    mediaType,
    manifest,
    blobs: [...seen].map(([d, size]) => ({ digest: d, size })),
    children,
  };
}

// ---------------------------------------------------------------------------
// Large image (benchmark)

/**
 * Roots walked (in order, depth-first, sorted) for the large image. Chosen for
 * real, poorly-compressible content: JDK jars/jmods, Debian's gzip'd docs,
 * shared libraries. Missing roots are skipped; Node's own install dir is the
 * last resort since it exists wherever the tests run.
 */
export const LARGE_IMAGE_SOURCE_ROOTS: readonly string[] = [
  '/usr/lib/jvm',
  '/usr/share/doc',
  '/usr/lib/x86_64-linux-gnu',
  '/usr/lib/aarch64-linux-gnu',
  '/usr/share/locale',
  '/usr/lib',
  '/usr/share',
  resolvePath(dirname(process.execPath), '..'),
];

/** Options for {@link pushLargeImage}. Sizes in bytes. */
export interface LargeImageOptions extends PushAuth {
  /** Minimum total compressed layer bytes, e.g. 50 * 1024 * 1024. */
  minBytes: number;
  /** Number of layers (>= 1); each gets about minBytes / layers compressed. */
  layers: number;
  /** Default 'oci'. */
  format?: ImageFormat;
  /** Default 'amd64'. */
  arch?: Arch;
  /** gzip level 1-9, default 6 (what docker/buildkit use). */
  gzipLevel?: number;
}

const largeCache = new Map<string, Promise<BuiltLayer[]>>();

/**
 * Builds (once per process for the same minBytes/layers/gzipLevel) `layers`
 * layers of real files from {@link LARGE_IMAGE_SOURCE_ROOTS}, totalling at
 * least `minBytes` compressed, and pushes them as a single-platform image
 * `name:tag`. Files larger than min(64 MiB, minBytes/layers) are skipped so
 * layers stay balanced. Throws if the machine has too little content.
 */
export async function pushLargeImage(
  registryUrl: string,
  name: string,
  tag: string,
  opts: LargeImageOptions,
): Promise<PushedImage> {
  if (!(opts.layers >= 1) || !(opts.minBytes > 0)) throw new Error('pushLargeImage: layers >= 1 and minBytes > 0 required');
  const level = opts.gzipLevel ?? 6;
  const key = `${opts.minBytes}:${opts.layers}:${level}`;
  let p = largeCache.get(key);
  if (!p) {
    p = buildLargeLayers(opts.minBytes, opts.layers, level);
    largeCache.set(key, p);
    p.catch(() => largeCache.delete(key));
  }
  const layers = await p;
  const img = composeImage(name, opts.format ?? 'oci', opts.arch ?? 'amd64', layers);
  return pushComposed(registryUrl, name, tag, tag, img, opts);
}

async function buildLargeLayers(minBytes: number, layerCount: number, level: number): Promise<BuiltLayer[]> {
  const cap = Math.min(64 * 1024 * 1024, Math.ceil(minBytes / layerCount));
  const roots = LARGE_IMAGE_SOURCE_ROOTS.filter((r) => existsSync(r));
  const walked: string[] = [];
  const under = (p: string, root: string) => p === root || p.startsWith(root + '/');
  function* files(): Generator<TarEntry & { kind: 'file' | 'symlink' | 'dir' }> {
    for (const root of roots) {
      if (walked.some((w) => under(root, w))) continue;
      const skip = (abs: string, st: Stats) =>
        (abs !== root && walked.some((w) => under(abs, w))) || (st.isFile() && (st.size > cap || st.size === 0));
      for (const e of walk(root, skip)) if (e.kind !== 'data') yield e;
      walked.push(root);
    }
  }
  const it = files();
  let pending: TarEntry | undefined;
  const next = (): TarEntry | undefined => {
    if (pending) {
      const p = pending;
      pending = undefined;
      return p;
    }
    const r = it.next();
    return r.done ? undefined : r.value;
  };

  const layers: BuiltLayer[] = [];
  let total = 0;
  for (let i = 0; i < layerCount; i++) {
    const target = Math.ceil((minBytes - total) / (layerCount - i));
    let first: string | undefined;
    let last: string | undefined;
    let anyFile = false;
    const layer = await buildLayerFile(
      `large layer ${i + 1}/${layerCount}`,
      function* (compressedSoFar) {
        for (;;) {
          const e = next();
          if (!e) return;
          if (compressedSoFar() >= target && anyFile) {
            pending = e;
            return;
          }
          if (!first) {
            first = e.name;
            yield* parentDirs('/' + e.name);
          }
          last = e.name;
          if (e.kind === 'file') anyFile = true;
          yield e;
        }
      },
      level,
    );
    layer.label = `large layer ${i + 1}/${layerCount}: /${first ?? ''} .. /${last ?? ''}`;
    if (layer.size < target) {
      throw new Error(
        `pushLargeImage: ran out of files on this machine (layer ${i + 1} is ${layer.size} bytes, wanted ${target}); roots: ${roots.join(', ')}`,
      );
    }
    layers.push(layer);
    total += layer.size;
  }
  return layers;
}
