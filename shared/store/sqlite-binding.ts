/**
 * Opens a better-sqlite3 database, turning a missing native binding into an error that says what to do.
 * better-sqlite3 is a native addon: `npm ci` downloads a prebuilt binding or compiles one (python3, make, a C++
 * compiler). Without either, or with a binding built for another Node.js, its loader's own error lists the ten
 * paths it tried and no remedy. Only the embedded backend loads this module (never bundled for Lambda).
 */
import Database from 'better-sqlite3';

/**
 * `new Database(file)`.
 * @throws Error naming `npm rebuild better-sqlite3` and the build tools when the native binding cannot be loaded;
 *   any other error unchanged
 */
export function openDatabase(file: string): Database.Database {
  try {
    return new Database(file);
  } catch (err) {
    const message = err instanceof Error ? err.message : '';
    if (!/Could not locate the bindings file|better_sqlite3\.node|NODE_MODULE_VERSION/.test(message)) throw err;
    throw new Error(
      `the embedded store's SQLite module (better-sqlite3) has no native binding for Node.js ${process.version} ` +
        `(${process.platform}-${process.arch}). Run \`npm rebuild better-sqlite3\` in this checkout: it downloads a ` +
        'prebuilt binding, or compiles one, which needs python3, make and a C++ compiler (Debian: apt-get install python3 make g++).',
      { cause: err },
    );
  }
}
