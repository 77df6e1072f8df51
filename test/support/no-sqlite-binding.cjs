// Preloaded (`node --require`) by test/unit/server-start.test.ts: makes better-sqlite3's native binding
// unloadable, as on a machine where `npm ci` could neither download a prebuilt one nor compile one. Every
// path the `bindings` loader tries fails as a missing file does (MODULE_NOT_FOUND), so the loader gives its
// real "Could not locate the bindings file. Tried: …" error. Nothing on disk is touched.
'use strict';
const Module = require('node:module');
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (String(request).endsWith('better_sqlite3.node')) {
    throw Object.assign(new Error(`Cannot find module '${request}'`), { code: 'MODULE_NOT_FOUND' });
  }
  return resolve.call(this, request, ...rest);
};
