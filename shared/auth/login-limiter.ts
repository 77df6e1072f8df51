/**
 * Failed logins per source IP: after `max` failures within `windowSeconds` the token endpoint answers 429
 * `TOOMANYREQUESTS` (with `Retry-After`) without checking the password, until the oldest failure of the
 * window has aged out. A success does not reset the count (an attacker holding one valid account cannot
 * clear it between guesses). State is in memory: per process locally, per Lambda container on AWS (so the
 * effective limit there is per container; API Gateway throttling is the outer bound).
 */
import { LRUCache } from 'lru-cache';

/** The limiter the token endpoint consults. Times are milliseconds since the epoch. */
export interface LoginLimiter {
  /** Seconds until `ip` may try again, or 0 when it may try now. */
  retryAfter(ip: string, now: number): number;
  /** Records one failed login from `ip`. */
  recordFailure(ip: string, now: number): void;
}

/** Most source IPs tracked at once (least recently failed forgotten first). */
const MAX_TRACKED_IPS = 10_000;

/** Builds a limiter allowing `max` failures per `windowSeconds` per IP. */
export function createLoginLimiter(opts: { max: number; windowSeconds: number }): LoginLimiter {
  const windowMs = opts.windowSeconds * 1000;
  const failures = new LRUCache<string, number[]>({ max: MAX_TRACKED_IPS });
  const recent = (ip: string, now: number) => (failures.get(ip) ?? []).filter((t) => now - t < windowMs);
  return {
    retryAfter(ip, now) {
      const times = recent(ip, now);
      if (times.length < opts.max) return 0;
      // Allowed again once enough failures left the window for one more attempt.
      const freeAt = times[times.length - opts.max] + windowMs;
      return Math.max(1, Math.ceil((freeAt - now) / 1000));
    },
    recordFailure(ip, now) {
      const times = recent(ip, now);
      times.push(now);
      // Keep at most `max` timestamps: more say nothing new.
      failures.set(ip, times.slice(-opts.max));
    },
  };
}
