/**
 * Names why an upstream request got no answer, from the error undici (or fetch) raised: its `code`, the codes of
 * its `cause` chain (fetch wraps everything in "fetch failed"), or the abort of the request's deadline. The cause
 * goes into the upstream request's log line and the `UpstreamError` message, so the operator reads "connection
 * refused" or "DNS", never only "fetch failed".
 */

/** The kinds of network failure told apart. */
export type FailureCause = 'connection refused' | 'DNS' | 'TLS' | 'timeout' | 'connection reset' | 'unreachable' | 'refused address' | 'network';

/** A network failure's cause and the most specific error code found (e.g. `ECONNREFUSED`). */
export interface DescribedFailure {
  cause: FailureCause;
  code?: string;
  /** The innermost error's message (credential-free: undici messages name the host and port at most). */
  detail: string;
}

const DNS = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME', 'EAI_FAIL', 'EAI_NODATA']);
const TIMEOUT = new Set(['ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ABORT_ERR']);
const RESET = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
const UNREACHABLE = new Set(['EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN', 'EADDRNOTAVAIL']);
const TLS = /^(ERR_TLS_|ERR_SSL_|CERT_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$|UNABLE_TO_|ERR_OSSL_|EPROTO$)/;

function classify(code: string): FailureCause | undefined {
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (DNS.has(code)) return 'DNS';
  if (TIMEOUT.has(code)) return 'timeout';
  if (RESET.has(code)) return 'connection reset';
  if (UNREACHABLE.has(code)) return 'unreachable';
  if (TLS.test(code)) return 'TLS';
  return undefined;
}

/**
 * Describes `err` (what a send rejected with). `timedOut`: the request's own deadline had passed (its abort
 * signal fired), which makes any error a timeout.
 */
export function describeFailure(err: unknown, timedOut = false): DescribedFailure {
  const chain: Array<Error & { code?: unknown }> = [];
  for (let e: unknown = err; e instanceof Error && chain.length < 8; e = (e as { cause?: unknown }).cause) chain.push(e);
  const innermost = chain.at(-1);
  const detail = innermost?.message ?? String(err);
  if (chain.some((e) => e.name === 'UpstreamError')) return { cause: 'refused address', detail };
  for (const e of [...chain].reverse()) {
    const code = typeof e.code === 'string' ? e.code : undefined;
    const cause = code ? classify(code) : undefined;
    if (cause) return { cause: timedOut && cause !== 'timeout' ? 'timeout' : cause, code, detail };
  }
  const codeOf = chain.map((e) => (typeof e.code === 'string' ? e.code : undefined)).filter((c) => c !== undefined).at(-1);
  if (timedOut || chain.some((e) => e.name === 'TimeoutError')) return { cause: 'timeout', code: codeOf, detail };
  return { cause: 'network', code: codeOf, detail };
}
