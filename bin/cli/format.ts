/** Output helpers of the CLI: byte sizes, times, aligned tables, and the `--json` last line. */

/** `1536` → `1.5 KiB` (binary units, like the config's byte sizes). */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** `n` and its noun: `1 tag`, `2 tags`, `0 repositories` (`plural` when it is not `<singular>s`). */
export function count(n: number, singular: string, plural = `${singular}s`): string {
  return `${n} ${n === 1 ? singular : plural}`;
}

/** A time (ms since the epoch) as `YYYY-MM-DD HH:MM` UTC; `-` for none. */
export function formatTime(ms: number | undefined): string {
  return ms ? new Date(ms).toISOString().slice(0, 16).replace('T', ' ') : '-';
}

/** Rows as columns separated by two spaces, each as wide as its widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

/** Writes `value` as one JSON line (the last line of stdout, for scripts). */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}
