/**
 * `pullthrough ls [<name or prefix>] [--json]`: what the cache holds — repositories, tags, digests, media types,
 * stored bytes, last-pulled times and signature-policy verdicts — as a table, or JSON for scripts
 * (`{repositories, usage}`; `usage` is what the last complete gc pass measured per rule).
 */
import type { Command } from 'commander';
import type { RepositoryListing } from '../../shared/registry/lifecycle/index.js';
import { count, formatBytes, formatTime, printJson, table } from '../cli/format.js';
import { withRuntime } from '../cli/runtime.js';

type Manifest = RepositoryListing['manifests'][number];

/**
 * The SIGNATURE column: the signature policy's stored verdict (`verified`, `unsigned: <reason>`, `signature` for
 * signature material the policy lets through), `-` when no policy checked it.
 */
function signature(m: Manifest | undefined): string {
  const v = m?.verification;
  if (!v) return '-';
  if (v.result === 'exempt') return 'signature';
  return v.result === 'unsigned' ? `unsigned: ${v.reason ?? 'unsigned'}` : 'verified';
}

/** Table rows of one repository: a row per tag, then a row per manifest no tag points at. */
function rows(r: RepositoryListing): string[][] {
  const out: string[][] = [];
  const byDigest = new Map(r.manifests.map((m) => [m.digest, m]));
  for (const t of r.tags) {
    const m = byDigest.get(t.digest);
    out.push([r.name, t.tag, t.digest.slice(0, 19), m?.mediaType ?? '(not stored)', m ? formatBytes(m.storedBytes) : '-', formatTime(t.pulledAt), signature(m)]);
  }
  for (const m of r.manifests) {
    if (m.tags.length === 0) out.push([r.name, '-', m.digest.slice(0, 19), m.mediaType, formatBytes(m.storedBytes), formatTime(m.pulledAt), signature(m)]);
  }
  return out;
}

export function register(program: Command): void {
  program
    .command('ls')
    .description('list cached repositories, tags, digests, sizes and last pulls')
    .argument('[filter]', 'a repository name or a prefix (a rule, or a path under one)')
    .option('--json', 'print JSON ({repositories, usage}) instead of a table')
    .action(async (filter: string | undefined, opts: { json?: boolean }) => {
      await withRuntime('ls', async (runtime) => {
        const repositories: RepositoryListing[] = [];
        for await (const r of runtime.lifecycle.ls(filter)) repositories.push(r);
        const usage = await runtime.lifecycle.lastUsage();
        if (opts.json) return printJson({ repositories, usage: usage ?? null });
        process.stdout.write(table(['REPOSITORY', 'TAG', 'DIGEST', 'MEDIA TYPE', 'STORED', 'LAST PULLED (UTC)', 'SIGNATURE'], repositories.flatMap(rows)));
        const total = repositories.reduce((s, r) => s + r.storedBytes, 0);
        process.stdout.write(`\n${count(repositories.length, 'repository', 'repositories')}, ${formatBytes(total)} stored (shared blobs counted per repository)\n`);
        if (usage) process.stdout.write(`last gc (${formatTime(usage.at)}): ${formatBytes(usage.storedBytes)} stored in all\n`);
      });
    });
}
