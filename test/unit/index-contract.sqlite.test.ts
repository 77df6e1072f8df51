/**
 * The index ports contract over the embedded adapter: SQLite in memory, and SQLite in a file (WAL mode) in a
 * scratch directory. SQLite has no item size limit, so the 600 KB manifest case runs inline.
 */
import { join } from 'node:path';
import { openSqliteIndex } from '../../shared/store/sqlite-index.js';
import { describeIndexContract } from '../contract/index-ports.contract.js';
import { describeLifecycleIndexContract } from '../contract/lifecycle-index.contract.js';
import { scratchDir } from '../support/scratch.js';

describeIndexContract('SQLite :memory:', async () => {
  const index = openSqliteIndex(':memory:');
  return { index, close: async () => index.close() };
});

describeIndexContract('SQLite file', async () => {
  const index = openSqliteIndex(join(scratchDir('sqlite-index-'), 'index.db'));
  return { index, close: async () => index.close() };
});

describeLifecycleIndexContract('SQLite file', async () => {
  const index = openSqliteIndex(join(scratchDir('sqlite-lifecycle-'), 'index.db'));
  return { index, close: async () => index.close() };
});
