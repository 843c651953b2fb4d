// Linux /proc readers: a process's memory and per-thread CPU time. The benches use
// them on the broker child (RSS after each promote; which threads burn the CPU).
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

export interface MemoryStatus {
  /** Resident set size, KiB. */
  readonly rss_kb: number;
  /** Peak resident set size, KiB. */
  readonly hwm_kb: number;
  readonly threads: number;
}

export function memoryStatus(pid: number): MemoryStatus {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text);
    if (m === null) throw new Error(`/proc/${pid}/status has no ${name}`);
    return Number(m[1]);
  };
  return { rss_kb: field('VmRSS'), hwm_kb: field('VmHWM'), threads: field('Threads') };
}

let ticks: number | undefined;
function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

/** One value per thread of a process, by thread id, read from /proc/<pid>/task/<tid>/<file>. */
function perThread<T>(pid: number, file: string, parse: (text: string) => T): Map<number, T> {
  const out = new Map<number, T>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      out.set(Number(tid), parse(readFileSync(`/proc/${pid}/task/${tid}/${file}`, 'utf8')));
    } catch {
      // The thread exited between readdir and read.
    }
  }
  return out;
}

/** CPU seconds (user + system) of each thread of a process, by thread id. */
export function threadCpu(pid: number): Map<number, number> {
  const hz = clockTicks();
  return perThread(pid, 'stat', (stat) => {
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / hz;
  });
}

export interface CpuSplit {
  /** CPU seconds of the process's main thread (the event loop). */
  readonly main_s: number;
  /** CPU seconds of every other thread (inference workers, libuv pool, libvips, V8 helpers). */
  readonly other_threads_s: number;
  /** The busiest non-main threads, CPU seconds each, descending. */
  readonly top_threads_s: number[];
}

/** What each thread spent between two threadCpu() snapshots. */
export function cpuBetween(pid: number, before: Map<number, number>, after: Map<number, number>): CpuSplit {
  let main = 0;
  const others: number[] = [];
  for (const [tid, t] of after) {
    const d = t - (before.get(tid) ?? 0);
    if (tid === pid) main = d;
    else others.push(d);
  }
  others.sort((a, b) => b - a);
  const r2 = (x: number) => Math.round(x * 100) / 100;
  return { main_s: r2(main), other_threads_s: r2(others.reduce((a, b) => a + b, 0)), top_threads_s: others.slice(0, 6).map(r2) };
}

/** Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat. */
export function machineBusy(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  // cpu  user nice system idle iowait irq softirq steal ...
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
  return busy / clockTicks();
}

/** The name (comm) of each thread of a process, by thread id: what the OS knows of each thread. */
export function threadNames(pid: number): Map<number, string> {
  return perThread(pid, 'comm', (text) => text.trim());
}
