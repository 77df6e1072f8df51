/**
 * An in-process fake upstream registry for unit tests: serves manifests and blobs from memory, optionally
 * behind Basic or Bearer (token) auth, and counts every request so a test can say "the second pull made 0
 * upstream requests". Fault switches (`down`, `status`, `wrongBytes`) stand in for what a real registry cannot
 * be made to do on demand.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One recorded request. `kind` is manifest | blob | tags | token | base | other. */
export interface RecordedRequest {
  method: string;
  path: string;
  kind: string;
  authorization?: string;
}

export interface FakeManifest {
  body: Buffer;
  contentType?: string;
  /** Omit the Docker-Content-Digest header on HEAD/GET (some registries do). */
  noDigestHeader?: boolean;
  /** Send this Docker-Content-Digest instead of the body's (a lying or confused upstream). */
  digestHeader?: string;
}

export interface FakeUpstream {
  url: string;
  host: string;
  /** host:port of the fake CDN blob redirects point to (`redirectBlobs` only). */
  cdnHost?: string;
  requests: RecordedRequest[];
  count(filter?: Partial<Pick<RecordedRequest, 'method' | 'kind'>>): number;
  reset(): void;
  /** Sets a manifest under `repo` for a tag (and always under its digest); returns the digest. */
  putManifest(repo: string, tag: string | undefined, m: FakeManifest): string;
  /** Serves `m` under `reference` (a tag or digest, whatever its bytes), without listing it as a tag. */
  serveAt(repo: string, reference: string, m: FakeManifest): void;
  putBlob(repo: string, bytes: Buffer): string;
  deleteTag(repo: string, tag: string): void;
  tags: Map<string, Set<string>>;
  /**
   * Faults: `down` answers 503 to everything; `status` forces a status for matching kinds; `delayMs` delays.
   * `slowBody`: blob GETs (manifest GETs with `kind: 'manifest'`) answer their headers at once, then send the
   * body in `chunkBytes` pieces with `pauseMs` between them (`noLength`: without `Content-Length`, i.e. chunked).
   */
  faults: {
    down?: boolean;
    /** Forced status for requests of `kind` (and `method`), the next `times` of them (all when absent). */
    status?: { kind: string; code: number; retryAfter?: string; method?: string; times?: number };
    delayMs?: number;
    /** Serve other bytes than stored (first byte changed): for manifests and blobs, or `blobs` only. */
    wrongBytes?: boolean | 'blobs';
    slowBody?: { chunkBytes: number; pauseMs: number; noLength?: boolean; kind?: 'blob' | 'manifest' };
    /**
     * Blob GETs (here and at the "CDN") answer their headers and the first half of the body, then hold the rest until
     * `until` resolves: a transfer that lasts exactly as long as the test wants (no timing), e.g. past a request's wait.
     */
    holdBlobBody?: { until: Promise<void> };
    /**
     * Tag lists as other registries answer them: `ignorePaging` returns every tag whatever `n`/`last` say (Debian's
     * distribution 2.8 does), `unsorted` in the order they were put, `maxPage` caps a page (with a `Link`).
     */
    tagList?: { ignorePaging?: boolean; unsorted?: boolean; maxPage?: number };
  };
  /** Most requests handled at once (concurrency seen by the upstream) since the last reset. */
  readonly maxInFlight: number;
  /** Requests whose response has not closed yet (a slow body still being sent counts). */
  readonly inFlight: number;
  close(): Promise<void>;
}

export interface FakeUpstreamOptions {
  auth?: { scheme: 'basic' | 'bearer'; username: string; password: string; tokenSeconds?: number };
  /** Answer blob GETs with a redirect to this extra server (a "CDN") that serves the bytes. */
  redirectBlobs?: boolean;
  /** Serve the referrers API (computed from stored manifests' `subject`); without it, referrers → 404. */
  referrers?: boolean;
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Starts the fake on 127.0.0.1 with a free port. */
export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const manifests = new Map<string, Map<string, FakeManifest>>(); // repo -> ref -> manifest
  const blobs = new Map<string, Map<string, Buffer>>(); // repo -> digest -> bytes
  const tags = new Map<string, Set<string>>();
  const requests: RecordedRequest[] = [];
  const faults: FakeUpstream['faults'] = {};
  let tokenCounter = 0;
  const validTokens = new Set<string>();
  let cdn: Server | undefined;
  let cdnUrl = '';

  const kindOf = (path: string) =>
    path === '/token' ? 'token' : path === '/v2/' ? 'base' : /\/referrers\//.test(path) ? 'referrers' : /\/manifests\//.test(path) ? 'manifest' : /\/blobs\//.test(path) ? 'blob' : /\/tags\/list$/.test(path) ? 'tags' : path.startsWith('/cdn/') ? 'cdn' : 'other';

  function authorized(req: IncomingMessage): boolean {
    if (!opts.auth) return true;
    const h = req.headers.authorization ?? '';
    if (opts.auth.scheme === 'basic') return h === `Basic ${Buffer.from(`${opts.auth.username}:${opts.auth.password}`).toString('base64')}`;
    return h.startsWith('Bearer ') && validTokens.has(h.slice(7));
  }

  async function handle(req: IncomingMessage, res: ServerResponse, base: string): Promise<void> {
    const url = new URL(req.url ?? '/', base);
    const kind = kindOf(url.pathname);
    requests.push({ method: req.method ?? 'GET', path: url.pathname + url.search, kind, authorization: req.headers.authorization });
    if (faults.delayMs) await new Promise((r) => setTimeout(r, faults.delayMs));
    if (faults.down) return void res.writeHead(503).end();
    const st = faults.status;
    if (st && (st.kind === kind || st.kind === '*') && (!st.method || st.method === req.method) && (st.times === undefined || st.times > 0)) {
      if (st.times !== undefined) st.times--;
      res.writeHead(st.code, st.retryAfter ? { 'Retry-After': st.retryAfter } : {});
      return void res.end();
    }
    if (kind === 'token') {
      const expected = `Basic ${Buffer.from(`${opts.auth?.username}:${opts.auth?.password}`).toString('base64')}`;
      if (req.headers.authorization !== expected) return void res.writeHead(401).end();
      const token = `tok-${++tokenCounter}`;
      validTokens.add(token);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return void res.end(JSON.stringify({ token, expires_in: opts.auth?.tokenSeconds ?? 300 }));
    }
    if (kind === 'cdn') {
      const digest = url.pathname.slice('/cdn/'.length);
      for (const repoBlobs of blobs.values()) {
        const b = repoBlobs.get(digest);
        if (b && faults.holdBlobBody && req.method === 'GET') return holdBody(res, { 'Content-Length': String(b.length) }, b, faults.holdBlobBody.until);
        if (b) {
          res.writeHead(200, { 'Content-Length': String(b.length) });
          return void res.end(req.method === 'HEAD' ? undefined : b);
        }
      }
      return void res.writeHead(404).end();
    }
    if (!authorized(req)) {
      const m = /^\/v2\/(.+)\/(manifests|blobs|tags)\//.exec(url.pathname);
      const challenge =
        opts.auth?.scheme === 'basic'
          ? 'Basic realm="fake"'
          : `Bearer realm="${base}/token",service="fake-registry"${m ? `,scope="repository:${m[1]}:pull"` : ''}`;
      res.writeHead(401, { 'WWW-Authenticate': challenge, 'Content-Type': 'application/json' });
      return void res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'auth' }] }));
    }
    if (kind === 'base') return void res.writeHead(200, { 'Content-Type': 'application/json' }).end('{}');
    const mm = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url.pathname);
    if (mm) {
      const m = manifests.get(mm[1])?.get(mm[2]);
      if (!m) return void res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}');
      const headers: Record<string, string> = { 'Content-Length': String(m.body.length) };
      if (m.contentType) headers['Content-Type'] = m.contentType;
      if (!m.noDigestHeader) headers['Docker-Content-Digest'] = m.digestHeader ?? sha256(m.body);
      const body = faults.wrongBytes === true ? Buffer.from(m.body).fill(0x20, 0, 1) : m.body;
      if (faults.slowBody?.kind === 'manifest' && req.method === 'GET') return sendSlowly(res, headers, body, faults.slowBody);
      res.writeHead(200, headers);
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    const bm = /^\/v2\/(.+)\/blobs\/([^/]+)$/.exec(url.pathname);
    if (bm) {
      const b = blobs.get(bm[1])?.get(bm[2]);
      if (!b) return void res.writeHead(404).end();
      if (opts.redirectBlobs && req.method === 'GET') return void res.writeHead(307, { Location: `${cdnUrl}/cdn/${bm[2]}` }).end();
      const body = faults.wrongBytes ? Buffer.from(b).fill(0x41, 0, 1) : b;
      const slow = faults.slowBody;
      if (faults.holdBlobBody && req.method === 'GET') return holdBody(res, { 'Content-Length': String(b.length), 'Docker-Content-Digest': bm[2] }, body, faults.holdBlobBody.until);
      if (slow && (slow.kind ?? 'blob') === 'blob' && req.method === 'GET') {
        return sendSlowly(res, { 'Content-Length': String(b.length), 'Docker-Content-Digest': bm[2] }, body, slow);
      }
      res.writeHead(200, { 'Content-Length': String(b.length), 'Docker-Content-Digest': bm[2] });
      return void res.end(req.method === 'HEAD' ? undefined : body);
    }
    const rm = /^\/v2\/(.+)\/referrers\/([^/]+)$/.exec(url.pathname);
    if (rm) {
      if (!opts.referrers) return void res.writeHead(404).end();
      const seen = new Set<string>();
      const found: unknown[] = [];
      for (const [ref, m] of manifests.get(rm[1]) ?? []) {
        if (!ref.startsWith('sha256:') || seen.has(ref)) continue;
        seen.add(ref);
        const parsed = JSON.parse(m.body.toString()) as { subject?: { digest?: string }; artifactType?: string; mediaType?: string; config?: { mediaType?: string } };
        if (parsed.subject?.digest === rm[2]) {
          found.push({ mediaType: parsed.mediaType, digest: ref, size: m.body.length, artifactType: parsed.artifactType ?? parsed.config?.mediaType });
        }
      }
      res.writeHead(200, { 'Content-Type': 'application/vnd.oci.image.index.v1+json' });
      return void res.end(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: found }));
    }
    const tm = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname);
    if (tm) {
      const tl = faults.tagList ?? {};
      const all = tl.unsorted ? [...(tags.get(tm[1]) ?? [])] : [...(tags.get(tm[1]) ?? [])].sort();
      if (!manifests.has(tm[1])) return void res.writeHead(404).end();
      const last = tl.ignorePaging ? null : url.searchParams.get('last');
      const asked = url.searchParams.has('n') && !tl.ignorePaging ? Number(url.searchParams.get('n')) : all.length;
      const n = Math.min(asked, tl.maxPage ?? asked);
      const after = last ? all.filter((t) => t > last) : all;
      const page = after.slice(0, n);
      const headers: Record<string, string> = { 'Content-Type': 'application/json' };
      if (after.length > n && page.length) headers.Link = `</v2/${tm[1]}/tags/list?n=${n}&last=${page[page.length - 1]}>; rel="next"`;
      res.writeHead(200, headers);
      return void res.end(JSON.stringify({ name: tm[1], tags: page }));
    }
    res.writeHead(404).end();
  }

  /** Answers 200 with `headers` at once, then `body` in `chunkBytes` pieces `pauseMs` apart (`noLength`: chunked). */
  /** Sends the headers and the first half of `body`, the rest once `until` resolved (see `faults.holdBlobBody`). */
  async function holdBody(res: ServerResponse, headers: Record<string, string>, body: Buffer, until: Promise<void>) {
    res.writeHead(200, headers);
    res.write(body.subarray(0, body.length >> 1));
    await until;
    if (!res.destroyed) res.end(body.subarray(body.length >> 1));
  }

  async function sendSlowly(res: ServerResponse, headers: Record<string, string>, body: Buffer, slow: { chunkBytes: number; pauseMs: number; noLength?: boolean }) {
    const { 'Content-Length': length, ...rest } = headers;
    res.writeHead(200, slow.noLength ? rest : { ...rest, 'Content-Length': length });
    for (let off = 0; off < body.length; off += slow.chunkBytes) {
      if (res.destroyed) return;
      res.write(body.subarray(off, off + slow.chunkBytes));
      await new Promise((r) => setTimeout(r, slow.pauseMs));
    }
    res.end();
  }

  const listen = (s: Server) => new Promise<number>((r) => s.listen(0, '127.0.0.1', () => r((s.address() as AddressInfo).port)));
  let base = '';
  let inFlight = 0;
  let maxInFlight = 0;
  const server = createServer((req, res) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.on('close', () => inFlight--);
    void handle(req, res, base).catch(() => res.destroy());
  });
  const port = await listen(server);
  base = `http://127.0.0.1:${port}`;
  if (opts.redirectBlobs) {
    cdn = createServer((req, res) => void handle(req, res, cdnUrl).catch(() => res.destroy()));
    cdnUrl = `http://127.0.0.1:${await listen(cdn)}`;
  }

  return {
    url: base,
    host: `127.0.0.1:${port}`,
    cdnHost: cdnUrl ? new URL(cdnUrl).host : undefined,
    requests,
    tags,
    faults,
    count(filter = {}) {
      return requests.filter((r) => (!filter.method || r.method === filter.method) && (!filter.kind || r.kind === filter.kind)).length;
    },
    reset() {
      requests.length = 0;
      maxInFlight = inFlight;
    },
    get maxInFlight() {
      return maxInFlight;
    },
    get inFlight() {
      return inFlight;
    },
    putManifest(repo, tag, m) {
      const digest = sha256(m.body);
      if (!manifests.has(repo)) manifests.set(repo, new Map());
      manifests.get(repo)!.set(digest, m);
      if (tag) {
        manifests.get(repo)!.set(tag, m);
        if (!tags.has(repo)) tags.set(repo, new Set());
        tags.get(repo)!.add(tag);
      }
      return digest;
    },
    serveAt(repo, reference, m) {
      if (!manifests.has(repo)) manifests.set(repo, new Map());
      manifests.get(repo)!.set(reference, m);
    },
    putBlob(repo, bytes) {
      const digest = sha256(bytes);
      if (!blobs.has(repo)) blobs.set(repo, new Map());
      blobs.get(repo)!.set(digest, bytes);
      return digest;
    },
    deleteTag(repo, tag) {
      manifests.get(repo)?.delete(tag);
      tags.get(repo)?.delete(tag);
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      if (cdn) {
        cdn.closeAllConnections();
        await new Promise<void>((r) => cdn!.close(() => r()));
      }
    },
  };
}

/** Builds a small OCI image (config + layers of the given bytes) in `repo`; returns digests and bytes. */
export function seedImage(up: FakeUpstream, repo: string, tag: string | undefined, layers: Buffer[], opts: { docker?: boolean; arch?: string } = {}) {
  const config = Buffer.from(JSON.stringify({ architecture: opts.arch ?? 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map(sha256) } }));
  const configDigest = up.putBlob(repo, config);
  const layerDigests = layers.map((l) => up.putBlob(repo, l));
  const mediaType = opts.docker ? 'application/vnd.docker.distribution.manifest.v2+json' : 'application/vnd.oci.image.manifest.v1+json';
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      config: { mediaType: opts.docker ? 'application/vnd.docker.container.image.v1+json' : 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layers.map((l, i) => ({ mediaType: opts.docker ? 'application/vnd.docker.image.rootfs.diff.tar.gzip' : 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layerDigests[i], size: l.length })),
    }, null, 3),
  );
  const digest = up.putManifest(repo, tag, { body, contentType: mediaType });
  return { digest, body, mediaType, configDigest, config, layerDigests };
}
