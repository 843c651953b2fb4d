// Summary of V8 .cpuprofile files (node --cpu-prof): self time by function and by
// module, for `npm run bench:llm -- --cpu-prof`. One file per thread; the main thread
// (the event loop) is detailed, the others only totalled.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../lib/process.ts';
import { round, table } from '../lib/stats.ts';

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }[];
  samples: number[];
  timeDeltas: number[];
}

const IDLE = new Set(['(idle)', '(program)']);

function where(url: string): string {
  if (url === '') return '(native / V8)';
  const path = url.replace(/^file:\/\//, '').replace(ROOT, '');
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(path);
  if (nm !== null) return `node_modules/${nm[1]}`;
  if (path.startsWith('node:')) return path.split('/')[0]!.replace(/^node:internal.*/, 'node:internal');
  return path;
}

function selfTimes(p: CpuProfile): { byFn: Map<string, number>; byModule: Map<string, number>; busyMs: number; totalMs: number } {
  const node = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) self.set(p.samples[i]!, (self.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
  const byFn = new Map<string, number>();
  const byModule = new Map<string, number>();
  let busy = 0;
  let total = 0;
  for (const [id, ms] of self) {
    const f = node.get(id)!.callFrame;
    total += ms;
    if (IDLE.has(f.functionName)) continue;
    busy += ms;
    const mod = where(f.url);
    // tsx's output keeps src/ files on one line: a line number helps in node_modules only.
    const key = `${f.functionName || '(anonymous)'}  ${mod}${f.lineNumber > 0 ? `:${f.lineNumber + 1}` : ''}`;
    byFn.set(key, (byFn.get(key) ?? 0) + ms);
    byModule.set(mod, (byModule.get(mod) ?? 0) + ms);
  }
  return { byFn, byModule, busyMs: busy, totalMs: total };
}

export function profileSummary(dir: string, top: number): string {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) return `no .cpuprofile in ${dir}`;
  const all = files.map((f) => ({ f, ...selfTimes(JSON.parse(readFileSync(join(dir, f), 'utf8')) as CpuProfile) })).sort((a, b) => b.busyMs - a.busyMs);
  // CPU.<date>.<time>.<pid>.<thread id>.<seq>.cpuprofile: thread 0 is the main thread, the
  // event loop that serves the requests (a Piscina worker parked in Atomics.wait looks busy).
  const main = all.find((x) => x.f.split('.')[4] === '0') ?? all[0]!;
  const pct = (ms: number) => `${round((100 * ms) / main.busyMs, 1)}%`;
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  const out = [
    `Main thread: ${main.f}, ${round(main.busyMs, 0)} ms busy of ${round(main.totalMs, 0)} ms sampled; other threads: ${all.filter((x) => x !== main).map((x) => `${round(x.busyMs, 0)} ms`).join(', ') || 'none'}`,
    '',
    'Self time by module:',
    table(['module', 'self ms', 'share of busy'], sorted(main.byModule).slice(0, 15).map(([k, v]) => [k, round(v, 1), pct(v)])),
    '',
    `Top ${top} functions by self time:`,
    table(['function  where', 'self ms', 'share of busy'], sorted(main.byFn).slice(0, top).map(([k, v]) => [k, round(v, 1), pct(v)])),
  ];
  return out.join('\n');
}
