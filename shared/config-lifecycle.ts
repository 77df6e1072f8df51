/**
 * The `lifecycle` settings of the config (cache-wide, and per rule under `rules[].lifecycle`): what the cache
 * forgets and when. Validated with zod as part of the config (config.ts). Byte sizes are a number of bytes or a
 * string with a binary unit: `500GiB`, `1.5TiB`, `800 MiB`, `4096`.
 */
import { z } from 'zod';

const UNITS: Record<string, number> = { B: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };

/** Parses a byte size (`500GiB`, `1.5 TiB`, `4096`) into bytes; undefined when it is not one. */
export function parseByteSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?\s*$/.exec(value);
  if (!m) return undefined;
  const bytes = Math.floor(Number(m[1]) * UNITS[m[2] ?? 'B']);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

const byteSize = z
  .union([z.number(), z.string()])
  .refine((v) => parseByteSize(v) !== undefined, 'a byte size: a number of bytes, or a number with KiB, MiB, GiB or TiB (e.g. 500GiB)')
  .transform((v) => parseByteSize(v)!);

/** A regular expression given as a string; must compile (also used by config.ts). */
export const regexSource = z.string().max(500).refine((src) => {
  try {
    new RegExp(src);
    return true;
  } catch {
    return false;
  }
}, 'not a valid regular expression');

/** The policy keys a rule may set (each overrides the cache-wide value of the same name, if any). */
const policy = {
  /** Tags and manifests not pulled for this many days are evicted (keepTags excepted). Unset: no expiry. */
  expireAfterUnpulledDays: z.number().positive().optional(),
  /** Tags matching this regular expression are never evicted by expiry or a budget (a purge still removes them). */
  keepTags: regexSource.optional(),
  /** Stored-bytes budget: over it, the least recently pulled images are evicted first. Unset: no budget. */
  maxBytes: byteSize.optional(),
};

/** `rules[].lifecycle`. */
export const ruleLifecycleSchema = z.object(policy).strict().optional();

/** The cache-wide `lifecycle` section. */
export const lifecycleSchema = z
  .object({
    ...policy,
    /**
     * Seconds between two writes of one tag's or manifest's last-pulled time: a warm pull within the interval
     * costs no write (default 3600). Eviction works at this granularity.
     */
    touchIntervalSeconds: z.number().int().positive().max(7 * 24 * 3600).default(3600),
    /**
     * Seconds between a GC taking a blob out of the index and deleting its bytes; must be at least twice the
     * signed-URL lifetime (`PULLTHROUGH_URL_TTL_SECONDS`), so a URL handed out just before never points at a
     * deleted object. Default: the larger of 3600 and twice the URL lifetime. Nothing pulled or stored within
     * this time (plus touchIntervalSeconds) is evicted by a budget.
     */
    graceSeconds: z.number().int().positive().optional(),
    /** Seconds a GC pass may run before it stops and saves where it was (the next pass resumes); default 840. */
    maxRunSeconds: z.number().positive().default(840),
    /** Store requests a GC pass keeps in flight (default 8). */
    concurrency: z.number().int().positive().max(64).default(8),
  })
  .strict()
  .prefault({});

/** The validated cache-wide lifecycle settings. */
export type LifecycleConfig = z.output<typeof lifecycleSchema>;
/** A rule's own lifecycle policy. */
export type RuleLifecycle = NonNullable<z.output<typeof ruleLifecycleSchema>>;

/** The grace period (seconds) in force: `graceSeconds`, else max(3600, 2 × URL lifetime). */
export function graceSecondsFor(lifecycle: LifecycleConfig, urlTtlSeconds: number): number {
  const grace = lifecycle.graceSeconds ?? Math.max(3600, 2 * urlTtlSeconds);
  if (grace < 2 * urlTtlSeconds) {
    throw new Error(`lifecycle.graceSeconds (${grace}) must be at least twice PULLTHROUGH_URL_TTL_SECONDS (${urlTtlSeconds})`);
  }
  return grace;
}
