/**
 * The stats counters contract over the embedded adapter (a SQLite file shared by two connections, as the server
 * and a CLI command share the index file).
 */
import { join } from 'node:path';
import { openSqliteCounters } from '../../shared/store/sqlite-counters.js';
import { describeRuleCountersContract } from '../contract/rule-counters.contract.js';
import { scratchDir } from '../support/scratch.js';

describeRuleCountersContract('SQLite file, two connections', async () => {
  const file = join(scratchDir('counters-'), 'index.db');
  const counters = openSqliteCounters(file);
  const second = openSqliteCounters(file);
  return {
    counters,
    second,
    close: async () => {
      counters.close();
      second.close();
    },
  };
});
