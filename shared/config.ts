/**
 * Configuration, loaded once and validated with zod. The environment is read only here and in
 * config-environment.ts (re-exported below), which lists the variables:
 * - `PULLTHROUGH_CONFIG` names the YAML config file (optional; built-in rules otherwise);
 * - a rule's `accessTokenEnv` names a variable holding its upstream access token (read by {@link parseConfig});
 *   `credentialsSecret` is read from Secrets Manager (endpoint override: the SDK's `AWS_ENDPOINT_URL_SECRETS_MANAGER`)
 */
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parsePasswordHash } from './auth/passwords.js';
import { lifecycleSchema, regexSource, ruleLifecycleSchema } from './config-lifecycle.js';
import { loadPolicyKeys, verifySchema } from './config-verify.js';

import { readEnvironment, StartupError, urlTtlSecondsOf, type Environment } from './config-environment.js';

export { parseTokenKeySource, readEnvironment, StartupError, type Environment, type TokenKeySource } from './config-environment.js';
export { assertServable, LAMBDA_MAX_MANIFEST_BYTES, LAMBDA_RESPONSE_BYTES } from './config-limits.js';

const DAY_SECONDS = 24 * 60 * 60;

/** A host as in a URL's authority: `hostname[:port]` (`[v6]:port` for IPv6), lower-cased. */
const hostSchema = z
  .string()
  .regex(/^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/, 'a host is hostname[:port], e.g. mirror.internal:5000')
  .transform((h) => h.toLowerCase());

const ruleSchema = z
  .object({
    /** First path component(s) of names served by this rule, e.g. `docker-hub`. */
    prefix: z.string().regex(/^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/, 'prefix must follow the repository-name grammar'),
    /** Upstream registry base URL, e.g. `https://registry-1.docker.io`. */
    upstream: z.url({ protocol: /^https?$/ }).transform((u) => u.replace(/\/+$/, '')),
    /** Seconds a cached tag is served without asking the upstream (default 24 h, like ECR). */
    ttlSeconds: z.number().int().nonnegative().default(DAY_SECONDS),
    /** Add `library/` to one-part names (Docker Hub official images). Default: true for Docker Hub upstreams. */
    dockerHubLibrary: z.boolean().optional(),
    /** Upstream credentials (the same keys an ECR pull-through cache secret uses). */
    username: z.string().optional(),
    accessToken: z.string().optional(),
    /** Name of an environment variable holding `accessToken` (with `username`), to keep the token out of the file. */
    accessTokenEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
    /**
     * Secrets Manager secret (name or ARN) holding `{"username": "...", "accessToken": "..."}`, the format of an
     * ECR pull-through cache secret. Read on first use, kept 10 minutes per container (shared/upstream/credentials.ts).
     */
    credentialsSecret: z.string().min(1).max(2048).optional(),
    /** Seconds to wait for upstream response headers on manifest/tag requests (default 10). */
    upstreamTimeoutSeconds: z.number().positive().default(10),
    /**
     * Extra hosts (host[:port]) an upstream redirect may point to over plain http (they may also resolve to
     * internal addresses). https targets and the upstream's own origin are always allowed. For local/test
     * upstreams only.
     */
    insecureRedirectHosts: z.array(hostSchema).default([]),
    /**
     * Hosts (host[:port]) the upstream client may reach although they resolve to internal addresses (loopback,
     * private, link-local, …): e.g. an in-VPC mirror an upstream redirects to, or a token realm on an internal
     * address (any realm, also the one the rule's own upstream names). The rule's own upstream host is always
     * allowed (shared/upstream/address-policy.ts).
     */
    internalHosts: z.array(hostSchema).default([]),
    /**
     * Hosts (host[:port]) reached through a redirect that may receive this rule's credentials when they challenge
     * (Basic, or sent to the token realm their challenge names). Default: only the rule's own upstream.
     */
    credentialHosts: z.array(hostSchema).default([]),
    /**
     * What a blob GET gets when its fill is still running after the last redirect hop: `unavailable` → 503
     * `UNAVAILABLE` with `Retry-After`; `upstream-redirect` → 307 to the upstream's own redirect target (e.g.
     * Docker Hub's CDN), when the upstream answers with one.
     */
    missFallback: z.enum(['unavailable', 'upstream-redirect']).default('unavailable'),
    /**
     * What a blob GET that misses gets first. `wait` (default): the fill starts and the request waits for it (the
     * bytes stream while they arrive locally; on AWS the blob is served once in S3, with hops and then
     * `missFallback` for long fills). `redirect`: the fill starts in the background and the client is answered at
     * once with a 307 to the upstream's own blob URL when the upstream hands out one that needs no credentials (a
     * CDN or presigned URL on another host), so it downloads straight from the upstream's CDN while the cache fills;
     * when the upstream gives no such URL, as `wait`. Clients without a route to the upstream (private subnets, a
     * VPC endpoint only) need `wait`.
     */
    missMode: z.enum(['wait', 'redirect']).default('wait'),
    /**
     * Tags matching this regular expression are never re-checked once cached (e.g. release tags
     * `^v?\\d+\\.\\d+\\.\\d+$`): neither on pull nor by the scheduled refresh.
     */
    pinnedTags: regexSource.optional(),
    /** Tags matching `pattern` are re-checked after `ttlSeconds` instead of the rule's TTL (e.g. `^latest$`, 3600). */
    frequentTags: z.object({ pattern: regexSource, ttlSeconds: z.number().int().nonnegative() }).strict().optional(),
    /**
     * When the upstream says a cached tag no longer exists (404 on re-check): `keep` serving the cached manifest
     * (default; the cache outlives upstream deletions, like ECR), or `stop`: remove the tag from the cache (its
     * manifests stay pullable by digest).
     */
    onUpstreamDelete: z.enum(['keep', 'stop']).default('keep'),
    /** Upstream re-checks the scheduled refresh runs at once for this rule (default 4). */
    refreshConcurrency: z.number().int().positive().max(64).default(4),
    /**
     * Seconds a pull waits for a stale tag's re-check (the HEAD and the GET of a moved manifest together) before
     * serving the cached manifest (default 3); a GET still running then finishes in the background.
     */
    revalidateTimeoutSeconds: z.number().positive().default(3),
    /** Seconds a "does not exist" answer from the upstream is remembered, so repeated misses skip it (default 60). */
    negativeCacheSeconds: z.number().nonnegative().default(60),
    /** This rule's lifecycle policy (config-lifecycle.ts); each key overrides the cache-wide one. */
    lifecycle: ruleLifecycleSchema,
    /** The rule's signature policy, checked when a manifest is filled (config-verify.ts; README "Signature policy"). */
    verify: verifySchema,
  })
  .strict()
  .refine((r) => r.accessToken === undefined || r.accessTokenEnv === undefined, { message: 'accessToken and accessTokenEnv exclude each other' })
  .refine((r) => (r.username === undefined) === (r.accessToken === undefined && r.accessTokenEnv === undefined), { message: 'username and accessToken (or accessTokenEnv) go together' })
  .refine((r) => r.credentialsSecret === undefined || r.username === undefined, { message: 'credentialsSecret replaces username/accessToken' });

const authSchema = z
  .object({
    /**
     * `none`: anyone may pull (the local default; an AWS deploy refuses it unless allowed explicitly);
     * `token`: Docker token flow with users from `users`; `iam`: the password is an STS GetCallerIdentity
     * request presigned with the caller's AWS credentials, matched against `iam.principals`.
     */
    mode: z.enum(['none', 'token', 'iam']).default('none'),
    /** Token audience and the `service` of the challenge (default: the request's Host). */
    service: z.string().min(1).max(253).regex(/^[\x21-\x7e]+$/, 'service must be printable ASCII without spaces').optional(),
    /** Token endpoint URL in the challenge (default: `<scheme>://<Host>/token`). */
    realm: z.url().optional(),
    /** Token lifetime, seconds (default 300, like Docker Hub). */
    tokenTtlSeconds: z.number().int().min(60).max(3600).default(300),
    /** Users and robot accounts (mode `token`). `passwordHash` from `npm run hash-password`; never plain text. */
    users: z
      .array(
        z
          .object({
            username: z.string().min(1).max(128).regex(/^[^:\s]+$/, 'username must not contain ":" or spaces'),
            passwordHash: z
              .string()
              .startsWith('scrypt$')
              .refine((h) => parsePasswordHash(h) !== undefined, 'passwordHash is not a valid scrypt hash (make one with npm run hash-password)'),
            /** Rule prefixes this user may pull; `*` = every rule. */
            prefixes: z.array(z.string()).min(1),
          })
          .strict(),
      )
      .default([])
      .refine((users) => new Set(users.map((u) => u.username)).size === users.length, { message: 'usernames must be unique' }),
    /** Mode `iam`: which callers (ARN patterns, `*` wildcards) may pull which prefixes. */
    iam: z
      .object({
        principals: z.array(z.object({ arn: z.string().startsWith('arn:'), prefixes: z.array(z.string()).min(1) }).strict()).default([]),
        /** STS region the presigned request must target (default us-east-1). */
        region: z.string().default('us-east-1'),
      })
      .strict()
      .prefault({}),
    /**
     * Failed logins allowed per (source IP, username) within `windowSeconds` before the token endpoint answers 429
     * for that pair (10 × `max` per source IP across usernames; shared/auth/login-limiter.ts).
     */
    failedLogins: z.object({ max: z.number().int().positive().default(10), windowSeconds: z.number().int().positive().default(300) }).strict().prefault({}),
  })
  .strict()
  // A realm on another host would issue tokens for its own Host as audience, which the registry's Host refuses.
  .refine((a) => a.realm === undefined || a.service !== undefined, { message: 'auth.realm needs auth.service (the token audience both sides agree on)' })
  .prefault({});

/** Built-in rules: those of a config without `rules` (or of no config file at all). */
export const DEFAULT_RULES = [
  { prefix: 'docker-hub', upstream: 'https://registry-1.docker.io' },
  { prefix: 'ghcr', upstream: 'https://ghcr.io' },
  { prefix: 'quay', upstream: 'https://quay.io' },
  { prefix: 'ecr-public', upstream: 'https://public.ecr.aws' },
  { prefix: 'k8s', upstream: 'https://registry.k8s.io' },
];

const configSchema = z
  .object({
    /** Client authentication (issue: docker login to your own cache). */
    auth: authSchema,
    /** The pull-through cache rules; absent: the built-in {@link DEFAULT_RULES} (e.g. a file that only sets `auth`). */
    rules: z.array(ruleSchema).min(1).prefault(DEFAULT_RULES),
    /**
     * Prefix of the rule serving names that start with no rule prefix (Docker `registry-mirrors` sends bare
     * Docker Hub names such as `library/nginx`). Unset: such names are `NAME_UNKNOWN`.
     */
    defaultRule: z.string().optional(),
    /**
     * Maximum manifest size in bytes (the spec expects at least 4 MiB to work); on Lambda at most
     * {@link LAMBDA_MAX_MANIFEST_BYTES} (see {@link assertServable}).
     */
    maxManifestBytes: z.number().int().positive().default(4 * 1024 * 1024),
    /** The blob miss path under API Gateway's ~30 s limit (DESIGN.md, "The miss path"). */
    blobFill: z
      .object({
        /**
         * Seconds one request waits for a fill, or for a proof by the bytes of a blob stored for another rule
         * (shared/registry/blob-prove.ts), before redirecting the client back to itself (default 20).
         */
        waitSeconds: z.number().nonnegative().default(20),
        /** Redirects back to the same URL before the rule's fallback; clients follow 10 in all (default 8). */
        maxHops: z.number().int().nonnegative().max(9).default(8),
        /**
         * Seconds a fill lease lasts without a heartbeat before it expires (default 900). A live fill's heartbeats
         * push it forward; it is the bound when nothing else frees a lease (and the DynamoDB TTL of lease items).
         */
        leaseSeconds: z.number().int().positive().default(900),
        /**
         * Seconds without a heartbeat after which a fill lease is stale and the next request takes it over
         * (default 10): a fill that crashed, was killed or never started costs this long. A running fill writes a
         * heartbeat every quarter of it while it makes progress (shared/registry/fill-lease.ts).
         */
        staleLeaseSeconds: z.number().positive().default(10),
        /**
         * The slowest upstream transfer a fill accepts, in bytes per second (default 65536: 64 KiB/s). A fill is
         * abandoned (its lease, temp file and upstream connection released) once it has run longer than
         * `deadlineGraceSeconds` + size / `minBytesPerSecond` (the bytes received so far when the upstream sent no size),
         * or once it received less than half of `minBytesPerSecond` × 60 bytes over the last 60 s after `deadlineGraceSeconds`
         * + 60 s (shared/registry/fill-lease.ts `rateWindow`: an announced size is only the upstream's claim).
         */
        minBytesPerSecond: z.number().positive().default(65_536),
        /** Seconds every fill gets on top of its size-derived time (default 60; see `minBytesPerSecond`). */
        deadlineGraceSeconds: z.number().nonnegative().default(60),
      })
      .strict()
      .prefault({}),
    /** What the cache forgets and when: budgets, expiry, garbage collection (config-lifecycle.ts). */
    lifecycle: lifecycleSchema,
    /** The scheduled refresh (DESIGN.md "Refresh"). */
    refresh: z
      .object({
        /** Due tags read per query (default 100). */
        batchSize: z.number().int().positive().max(1000).default(100),
        /** Seconds a run may take before it stops starting checks (default 840: under Lambda's 15 min). */
        maxRunSeconds: z.number().positive().default(840),
        /** Re-tries of a re-check the upstream answered 429, waiting its `Retry-After` (default 3). */
        rateLimitRetries: z.number().int().nonnegative().max(10).default(3),
        /** Longest wait for one `Retry-After`, seconds (default 60). */
        maxRetryAfterSeconds: z.number().positive().default(60),
      })
      .strict()
      .prefault({}),
    /**
     * Images the scheduled pass keeps in the cache (shared/registry/scheduled.ts): each run prefetches them, which
     * costs nothing for what is cached and refills what was evicted. `<name>:<tag>` or `<name>@<digest>` (with the
     * rule prefix, as clients pull it), or `{image, platforms}` to fill only some platforms of an index
     * (`os/arch[/variant]`, e.g. `linux/amd64`).
     */
    prefetch: z
      .array(
        z.union([
          z.string().transform((image) => ({ image, platforms: [] as string[] })),
          z.object({ image: z.string(), platforms: z.array(z.string().regex(/^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/, 'a platform is os/arch[/variant], e.g. linux/amd64')).default([]) }).strict(),
        ]).refine((e) => /[:@]/.test(e.image.slice(e.image.lastIndexOf('/') + 1)), 'give a tag or a digest: <name>:<tag> or <name>@<digest>'),
      )
      .max(1000)
      .default([]),
  })
  .strict();

/** An issue found across fields, in zod's issue shape so one list prints them all. */
type CrossFieldIssue = { code: 'custom'; message: string; path: PropertyKey[]; input: unknown };

/**
 * The problems that span fields (duplicate prefixes, `defaultRule`, users' prefixes, `accessTokenEnv` variables),
 * read defensively from the raw input: zod skips object refinements once a field has a type error, and a config
 * with several problems should list them all in one go.
 */
function crossFieldIssues(input: unknown, env: NodeJS.ProcessEnv): CrossFieldIssue[] {
  const issues: CrossFieldIssue[] = [];
  const add = (path: PropertyKey[], message: string) => issues.push({ code: 'custom', message, path, input: undefined });
  const raw = (input ?? {}) as { rules?: unknown; defaultRule?: unknown; auth?: { users?: unknown }; lifecycle?: { graceSeconds?: unknown } };
  const rules = Array.isArray(raw.rules) ? (raw.rules as Array<Record<string, unknown> | null>) : raw.rules === undefined ? DEFAULT_RULES : [];
  const prefixes = rules.map((r) => (typeof r?.prefix === 'string' ? r.prefix : undefined));
  const seen = new Set<string>();
  prefixes.forEach((p, i) => {
    if (p === undefined) return;
    if (seen.has(p)) add(['rules', i, 'prefix'], `rule prefixes must be unique: ${JSON.stringify(p)} is used twice`);
    seen.add(p);
  });
  if (typeof raw.defaultRule === 'string' && !seen.has(raw.defaultRule)) {
    add(['defaultRule'], `defaultRule must be the prefix of a rule: ${JSON.stringify(raw.defaultRule)} is none`);
  }
  // A user's prefix that no rule has is a typo that would silently grant nothing.
  const users = Array.isArray(raw.auth?.users) ? (raw.auth.users as Array<{ prefixes?: unknown } | null>) : [];
  users.forEach((u, i) => {
    for (const p of Array.isArray(u?.prefixes) ? u.prefixes : []) {
      if (p !== '*' && !seen.has(p as string)) add(['auth', 'users', i, 'prefixes'], `${JSON.stringify(p)} is not a rule prefix (nor *)`);
    }
  });
  // A rule's `accessTokenEnv` must name a variable that is set (parseConfig reads it).
  rules.forEach((r, i) => {
    const name = r?.accessTokenEnv;
    if (typeof name === 'string' && !env[name]) add(['rules', i, 'accessTokenEnv'], `rule ${String(r?.prefix)}: accessTokenEnv ${name} is not set in the environment`);
  });
  // The grace period against the signed-URL lifetime (graceSecondsFor's rule), listed with the rest: a URL handed
  // out just before a blob left the index must not outlive its bytes. A bad TTL is the environment's problem.
  const grace = raw.lifecycle?.graceSeconds;
  const urlTtlSeconds = urlTtlSecondsOf(env);
  if (typeof grace === 'number' && urlTtlSeconds !== undefined && grace < 2 * urlTtlSeconds) {
    add(['lifecycle', 'graceSeconds'], `graceSeconds (${grace}) must be at least twice PULLTHROUGH_URL_TTL_SECONDS (${urlTtlSeconds}): ${2 * urlTtlSeconds} or more`);
  }
  return issues;
}

/** Client authentication settings. */
export type AuthConfig = z.output<typeof authSchema>;
/** A pull-through cache rule: names under `prefix/` are served from `upstream`. */
export type PullThroughCacheRule = z.output<typeof ruleSchema>;
/** The validated registry configuration. */
export type RegistryConfig = z.output<typeof configSchema>;


/**
 * Validates a config object (e.g. parsed YAML). Key files of signature policies are read relative to `baseDir`
 * (the config file's directory; default the working directory).
 * @throws Error with every problem listed, so a bad config fails at start-up, not on the first pull.
 */
export function parseConfig(input: unknown, env: NodeJS.ProcessEnv = process.env, baseDir = process.cwd()): RegistryConfig {
  const result = configSchema.safeParse(input);
  const keys = loadPolicyKeys(input, baseDir);
  const keyIssues = keys.issues.map((i) => ({ code: 'custom' as const, ...i, input: undefined }));
  const issues = [...(result.success ? [] : result.error.issues), ...crossFieldIssues(input, env), ...keyIssues];
  if (!result.success || issues.length) throw new Error(`invalid pullthrough config:\n${z.prettifyError(new z.ZodError(issues))}`);
  // A rule's `accessTokenEnv` becomes its `accessToken`, and a key file its PEM text, so the rest of the code sees one shape.
  for (const rule of result.data.rules) {
    if (rule.accessTokenEnv !== undefined) rule.accessToken = env[rule.accessTokenEnv];
    for (const policy of rule.verify) policy.keys = policy.keys.map((source) => keys.pemOf.get(source) ?? source);
  }
  return result.data;
}

/** Loads the YAML config file at `path`, or the built-in rules when `path` is undefined. */
export function loadConfig(path: string | undefined, env: NodeJS.ProcessEnv = process.env): RegistryConfig {
  if (!path) return parseConfig({});
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the config file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (err) {
    throw new Error(`the config file ${path} is not valid YAML: ${(err as Error).message}`);
  }
  return parseConfig(parsed, env, dirname(path));
}

/**
 * The environment and the config file it names, read together.
 * @throws StartupError with every problem of both (a bad port and a bad log level; a typo'd key and a too short
 *   grace period): one start-up names them all.
 */
export function loadSettings(processEnv: NodeJS.ProcessEnv = process.env): { env: Environment; config: RegistryConfig } {
  let env: Environment | undefined;
  let envProblems: string[] = [];
  try {
    env = readEnvironment(processEnv);
  } catch (err) {
    if (!(err instanceof StartupError)) throw err;
    envProblems = err.environment;
  }
  try {
    const config = loadConfig(processEnv.PULLTHROUGH_CONFIG || undefined, processEnv);
    if (env) return { env, config };
    throw new StartupError(envProblems);
  } catch (err) {
    if (err instanceof StartupError) throw err;
    throw new StartupError(envProblems, (err as Error).message);
  }
}
