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
