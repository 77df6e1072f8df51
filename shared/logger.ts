/**
 * The process logger (Powertools for AWS Lambda): JSON lines on stdout, in Lambda and in the local server.
 * A logged error's stack (and so its `location`) is mapped through the bundle's source map (./stack-trace.ts), so
 * the minified Lambda bundles log readable traces without Node's `--enable-source-maps`.
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { mapStackTrace } from './stack-trace.js';

/**
 * A copy of `error` (still an `Error` of its class, own fields kept) whose stack, and its cause's, are mapped to
 * the original sources; `error` itself is left as it is.
 */
export function sourceMappedError(error: Error): Error {
  const copy = Object.assign(Object.create(Object.getPrototypeOf(error)) as Error, error);
  Object.defineProperties(copy, {
    name: { value: error.name, writable: true, configurable: true },
    message: { value: error.message, writable: true, configurable: true },
    stack: { value: typeof error.stack === 'string' ? mapStackTrace(error.stack) : error.stack, writable: true, configurable: true },
    cause: { value: error.cause instanceof Error ? sourceMappedError(error.cause) : error.cause, writable: true, configurable: true },
  });
  return copy;
}

/** Creates the logger; `level` is DEBUG | INFO | WARN | ERROR | SILENT. */
export function createLogger(level: string): Logger {
  return new Logger({
    serviceName: 'pullthrough',
    logLevel: level.toUpperCase() as 'INFO',
    // Runs before Powertools' own error formatting, which then sees the mapped stack.
    jsonReplacerFn: (_key, value) => (value instanceof Error ? sourceMappedError(value) : value),
  });
}
