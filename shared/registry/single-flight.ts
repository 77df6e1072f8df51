/**
 * In-process single flight: concurrent callers with the same key share one running promise, so concurrent
 * misses of one digest make one upstream request. (Across processes/Lambda instances the fill lease of the
 * store does this job.)
 */
export interface SingleFlight {
  /** Runs `fn` unless a call with `key` is already running, in which case its promise is returned. */
  run<T>(key: string, fn: () => Promise<T>): Promise<T>;
  /** Number of flights in progress (for tests and metrics). */
  readonly size: number;
}

/** Creates an empty single-flight group. */
export function createSingleFlight(): SingleFlight {
  const flights = new Map<string, Promise<unknown>>();
  return {
    run<T>(key: string, fn: () => Promise<T>): Promise<T> {
      const running = flights.get(key);
      if (running) return running as Promise<T>;
      const p = fn().finally(() => flights.delete(key));
      flights.set(key, p);
      return p;
    },
    get size() {
      return flights.size;
    },
  };
}
