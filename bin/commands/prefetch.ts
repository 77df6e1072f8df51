/**
 * `pullthrough prefetch <name>:<tag>|<name>@<digest> ... [--file list.txt] [--platform linux/amd64]...`: fills the
 * cache with images before they are pulled (shared/registry/prefetch.ts): every platform of an image index unless
 * `--platform` names some, every blob through the miss path (beside a running server on the same store, or on
 * DynamoDB + S3 with `PULLTHROUGH_BACKEND=aws`). What is cached is not fetched again. Progress on stderr: a bar
 * per image on a terminal (cli-progress), plain lines otherwise; one summary line on stdout. Exits 1 if any image
 * failed.
 */
import { readFileSync } from 'node:fs';
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { parseImageRef, prefetchImage, type ImageRef, type PrefetchProgress } from '../../shared/registry/prefetch.js';
import { count } from '../cli/format.js';
import { UsageError } from '../cli/program.js';
import { withRuntime } from '../cli/runtime.js';

const PLATFORM = /^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/;

/** Bytes for people: binary units, one decimal. */
function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  for (; v >= 1024 && i < units.length - 1; i++) v /= 1024;
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** The images of the arguments and the `--file` (one per line; blank lines and `#` comments skipped). */
function imagesOf(args: string[], file: string | undefined): ImageRef[] {
  let lines: string[] = [];
  if (file !== undefined) {
    try {
      lines = readFileSync(file, 'utf8').split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean);
    } catch (err) {
      throw new UsageError(`cannot read --file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  const all = [...args, ...lines];
  if (all.length === 0) throw new UsageError('give at least one image (or --file)');
  return all.map((text) => {
    try {
      return parseImageRef(text);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  });
}

/** Progress of one image: a bar on a terminal, lines otherwise. */
function reporter(label: string, bars: MultiBar | undefined): PrefetchProgress & { finish(line: string): void } {
  let bar: SingleBar | undefined;
  let total = 0;
  return {
    planned(plan) {
      total = plan.bytes;
      const what = `${plan.platforms.length === 1 && plan.platforms[0] === 'single' ? '1 image' : `${count(plan.platforms.length, 'platform')} (${plan.platforms.join(', ')})`}, ${count(plan.blobs, 'blob')}, ${bytes(plan.bytes)}`;
      if (bars) bar = bars.create(Math.max(plan.bytes, 1), 0, { image: label, amount: `0 B/${bytes(plan.bytes)}` });
      else process.stderr.write(`${label}: ${what}\n`);
    },
    progress(done) {
      bar?.update(Math.min(done, Math.max(total, 1)), { amount: `${bytes(done)}/${bytes(total)}` });
    },
    finish(line) {
      if (bar) {
        bar.update(Math.max(total, 1), { amount: `${bytes(total)}/${bytes(total)}` });
        bar.stop();
      }
      if (bars) bars.log(`${line}\n`);
      else process.stderr.write(`${line}\n`);
    },
  };
}

export function register(program: Command): void {
  program
    .command('prefetch')
    .description('fill the cache with images before anyone pulls them')
    .argument('[images...]', '<prefix>/<repository>:<tag> or <prefix>/<repository>@<digest>')
    .option('--file <path>', 'more images, one per line (# comments)')
    .option('--platform <os/arch[/variant]>', 'only this platform of an image index (repeatable; default: every one)', (v: string, all: string[]) => {
      if (!PLATFORM.test(v)) throw new UsageError(`--platform ${v}: give os/arch[/variant], e.g. linux/amd64`);
      return [...all, v];
    }, [] as string[])
    .action(async (args: string[], opts: { file?: string; platform: string[] }) => {
      const images = imagesOf(args, opts.file);
      await withRuntime('prefetch', async (runtime) => {
        const bars = process.stderr.isTTY
          ? new MultiBar({ format: '{image} [{bar}] {percentage}% {amount}', hideCursor: true, stopOnComplete: false, clearOnComplete: false, stream: process.stderr }, Presets.shades_classic)
          : undefined;
        let failed = 0;
        let fetched = 0;
        try {
          for (const ref of images) {
            const label = `${ref.name}${ref.reference.includes(':') ? '@' : ':'}${ref.reference}`;
            const report = reporter(label, bars);
            try {
              const r = await prefetchImage(runtime, ref, { platforms: opts.platform, report });
              fetched += r.fetchedBytes;
              report.finish(`${label}: done, ${r.cachedBlobs} of ${r.blobs} blobs were cached, ${bytes(r.fetchedBytes)} fetched (${r.digest})`);
            } catch (err) {
              failed++;
              report.finish(`${label}: failed: ${(err as Error).message}`);
            }
          }
        } finally {
          bars?.stop();
        }
        process.stdout.write(`prefetched ${images.length - failed} of ${images.length} images, ${bytes(fetched)} from upstreams\n`);
        if (failed > 0) process.exitCode = 1;
      });
    });
}
