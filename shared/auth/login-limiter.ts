/**
 * Failed logins per (source IP, username): after `max` failures of one username from one IP within
 * `windowSeconds`, the token endpoint answers 429 `TOOMANYREQUESTS` (with `Retry-After`) for that pair without
 * checking the password, until the oldest failure of the window has aged out. Keyed on the pair, not the IP
 * alone: behind a NAT or on a shared CI runner, one job with a wrong password must not lock out every other user
 * of the same address. An IP is also limited across usernames, at {@link IP_FACTOR} × `max` failures (password
 * spraying, or cycling usernames to push one's own entry out of the bounded memory).
 *
 * A success does not reset the count (an attacker holding one valid account cannot clear it between guesses).
 * State is in memory: per process locally, per Lambda container on AWS (so the effective limit there is per
 * container; API Gateway throttling is the outer bound).
 */
import { LRUCache } from 'lru-cache';

/** The limiter the token endpoint consults. Times are milliseconds since the epoch. */
export interface LoginLimiter {
  /** Seconds until `username` may try again from `ip`, or 0 when it may try now. */
  retryAfter(ip: string, username: string, now: number): number;
  /** Records one failed login of `username` from `ip`. */
  recordFailure(ip: string, username: string, now: number): void;
}

/** Most (IP, username) pairs and IPs tracked at once (least recently failed forgotten first). */
const MAX_TRACKED = 10_000;
/** An IP may fail this many times `max` across all usernames within the window. */
export const IP_FACTOR = 10;

/** Builds a limiter allowing `max` failures per `windowSeconds` per (IP, username), `max` × 10 per IP. */
export function createLoginLimiter(opts: { max: number; windowSeconds: number }): LoginLimiter {
  const windowMs = opts.windowSeconds * 1000;
  const failures = new LRUCache<string, number[]>({ max: MAX_TRACKED });
  const pairKey = (ip: string, username: string) => `user\n${ip}\n${username}`;
  const ipKey = (ip: string) => `ip\n${ip}`;
  const recent = (key: string, now: number) => (failures.get(key) ?? []).filter((t) => now - t < windowMs);
  /** Seconds until `key` is below `max` failures in the window again; 0 when it is. */
  const wait = (key: string, max: number, now: number) => {
    const times = recent(key, now);
    if (times.length < max) return 0;
    // Allowed again once enough failures left the window for one more attempt.
    return Math.max(1, Math.ceil((times[times.length - max] + windowMs - now) / 1000));
  };
  const record = (key: string, max: number, now: number) => {
    // Keep at most `max` timestamps: more say nothing new.
    failures.set(key, [...recent(key, now), now].slice(-max));
  };
  return {
    retryAfter(ip, username, now) {
      return Math.max(wait(pairKey(ip, username), opts.max, now), wait(ipKey(ip), opts.max * IP_FACTOR, now));
    },
    recordFailure(ip, username, now) {
      record(pairKey(ip, username), opts.max, now);
      record(ipKey(ip), opts.max * IP_FACTOR, now);
    },
  };
}
