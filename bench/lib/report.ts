// Where and how a bench ran, and writing its results file.
import { cpus, availableParallelism, loadavg, totalmem } from 'node:os';
import { renameSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './process.ts';

export function machine() {
  const c = cpus();
  return {
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpu_count: availableParallelism(),
    cpu_model: c[0]?.model ?? 'unknown',
    memory_gb: Math.round(totalmem() / 2 ** 30),
    /** 1-minute load average when the bench started: other work on the box skews figures. */
    loadavg_1m_at_start: Math.round(loadavg()[0]! * 100) / 100,
    date: new Date().toISOString(),
  };
}

/** Writes bench/results/<name>.json atomically (a .tmp then rename). */
export function writeResults(name: string, results: unknown): string {
  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.json`);
  writeFileSync(`${file}.tmp`, JSON.stringify(results, null, 2) + '\n');
  renameSync(`${file}.tmp`, file);
  return file;
}

/** A GitHub-flavoured markdown table; numbers right-aligned, null prints as '–'. */
export function mdTable(header: readonly string[], rows: readonly (readonly (string | number | null)[])[]): string {
  const cell = (c: string | number | null): string => (c === null ? '–' : typeof c === 'number' ? fmt(c) : c);
  const numeric = header.map((_, i) => rows.some((r) => typeof r[i] === 'number'));
  return [
    `| ${header.join(' | ')} |`,
    `| ${numeric.map((n) => (n ? '---:' : '---')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`),
  ].join('\n');
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const a = Math.abs(n);
  if (Number.isInteger(n)) return a >= 10_000 ? n.toLocaleString('en-US') : String(n);
  return a >= 10_000 ? Math.round(n).toLocaleString('en-US') : a >= 100 ? n.toFixed(0) : a >= 10 ? n.toFixed(1) : a >= 1 ? n.toFixed(2) : n.toFixed(3);
}
