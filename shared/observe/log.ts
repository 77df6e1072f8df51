/**
 * The logging vocabulary every layer may import (STYLE.md: cross-cutting vocabularies live in a module of their
 * own). Powertools' `Logger` satisfies {@link Log}; tests pass a recorder.
 */

/** The logging surface the core uses. Extra objects are merged into the JSON line. */
export interface Log {
  debug(message: string, ...extra: Record<string, unknown>[]): void;
  info(message: string, ...extra: Record<string, unknown>[]): void;
  warn(message: string, ...extra: Record<string, unknown>[]): void;
  error(message: string, ...extra: Record<string, unknown>[]): void;
}
