/**
 * The process logger (Powertools for AWS Lambda): JSON lines on stdout, in Lambda and in the local server.
 */
import { Logger } from '@aws-lambda-powertools/logger';

/** Creates the logger; `level` is DEBUG | INFO | WARN | ERROR | SILENT. */
export function createLogger(level: string): Logger {
  return new Logger({ serviceName: 'pullthrough', logLevel: level.toUpperCase() as 'INFO' });
}
