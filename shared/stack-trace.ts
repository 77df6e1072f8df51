/**
 * Readable stack traces from the minified Lambda bundles without `--enable-source-maps`.
 *
 * Node's `--enable-source-maps` parses every loaded bundle's source map at start-up: about 2.9 MB of JSON per
 * function, which bench/cold-start.ts measured at 15–71 ms more CPU per cold start (1.06–1.27×). The deploy
 * leaves it off (serverless.yml `nodeOptions`), and the logger maps a logged error's stack here instead, lazily:
 * the first time a frame points into a file with a `<file>.map` beside it (what serverless-esbuild ships in each
 * zip), that map is read and parsed with Node's own `module.SourceMap` and kept for the process; frames of files
 * without one (tsx-run sources, Node internals) are left as they are. So only an error that gets logged pays,
 * once.
 *
 * A mapped frame names the source as the bundler saw it, relative to the service root when packaged from there
 * (`shared/registry/app.ts`; a dependency from its `node_modules/`), with 1-based line and column as in any Node
 * stack trace.
 */
import { existsSync, readFileSync } from 'node:fs';
import { SourceMap } from 'node:module';
import { fileURLToPath } from 'node:url';

/** Parsed maps by bundle path; null when the file has none (or it cannot be read). */
const maps = new Map<string, SourceMap | null>();

function mapFor(file: string): SourceMap | null {
  let map = maps.get(file);
  if (map === undefined) {
    map = null;
    try {
      if (existsSync(`${file}.map`)) map = new SourceMap(JSON.parse(readFileSync(`${file}.map`, 'utf8')));
    } catch {
      map = null; // an unreadable map leaves the frames as they are
    }
    maps.set(file, map);
  }
  return map;
}

/** A source as the map names it, relative to the bundle: without its leading `../`, a dependency from its last `node_modules/`. */
function sourceName(source: string): string {
  const dependency = source.lastIndexOf('node_modules/');
  return dependency >= 0 ? source.slice(dependency) : source.replace(/^(\.\.\/)+/, '');
}

/** A frame's `file:line:column` (a path or a file URL of a `.js`/`.mjs`/`.cjs` file), as V8 prints it. */
const FRAME = /((?:file:\/\/)?\/[^\s()]+?\.[cm]?js):(\d+):(\d+)/g;

/**
 * `stack` with every frame of a bundle that has a source map rewritten to its original `source:line:column`.
 * Frames without a map, and anything not a frame, are kept as they are.
 */
export function mapStackTrace(stack: string): string {
  return stack.replace(FRAME, (frame: string, location: string, line: string, column: string) => {
    let file = location;
    try {
      if (location.startsWith('file://')) file = fileURLToPath(location);
    } catch {
      return frame;
    }
    const map = mapFor(file);
    const entry = map?.findEntry(Number(line) - 1, Number(column) - 1) as { originalSource?: string; originalLine?: number; originalColumn?: number } | undefined;
    if (!entry?.originalSource || entry.originalLine === undefined || entry.originalColumn === undefined) return frame;
    return `${sourceName(entry.originalSource)}:${entry.originalLine + 1}:${entry.originalColumn + 1}`;
  });
}
