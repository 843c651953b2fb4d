// The servers of bench:llm, each its own child process bound to 127.0.0.1: the mock
// upstream, the broker and the peer gateway (Portkey). The load
// generator stays in the bench process, so no server shares an event loop with it.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { sleep } from '../lib/stats.ts';
import { answers, freePort, live, srcEntry, startChild, type BrokerRuntime, type Child } from '../lib/process.ts';

export const PORTKEY_ENTRY = 'node_modules/@portkey-ai/gateway/build/start-server.js';

export interface MockFlags {
  readonly tokens: number;
  readonly tps: number;
  readonly ttftMs: number;
}

/** `npm run mock-upstream` without npm in between, so the pid is the server's own (from dist/ with runtime 'dist'). */
export function startMock(name: string, f: MockFlags, runtime: BrokerRuntime = 'tsx'): Promise<Child> {
  const args = [...srcEntry(runtime, 'mock-upstream/main'), '--port', '0', '--tokens', String(f.tokens), '--tps', String(f.tps), '--ttft-ms', String(f.ttftMs)];
  return startChild({
    name,
    args,
    readyTimeoutMs: 30_000,
    async ready(out) {
      const m = /\{"listening":(\d+)\}/.exec(out());
      if (m === null) throw new Error('no port yet');
      return Number(m[1]);
    },
  });
}

/** The minimal uWS + undici proxy (floor-proxy.ts) in front of OpenAI-style upstreams, chosen by the request's model. */
export function startFloorProxy(model: string, routes: Readonly<Record<string, string>>): Promise<Child> {
  return startChild({
    name: 'floor-proxy',
    args: ['--import', 'tsx', 'bench/llm/floor-proxy.ts', model, ...Object.entries(routes).map(([k, v]) => `${k}=${v}`)],
    readyTimeoutMs: 30_000,
    async ready(out) {
      const m = /\{"listening":(\d+)\}/.exec(out());
      if (m === null) throw new Error('no port yet');
      return Number(m[1]);
    },
  });
}

/** Portkey's gateway as PEERS.md starts it (`--port=` needs the `=`). */
export async function startPortkey(): Promise<Child> {
  const port = await freePort();
  return startChild({
    name: 'portkey',
    args: [PORTKEY_ENTRY, `--port=${port}`, '--headless'],
    readyTimeoutMs: 60_000,
    async ready() {
      await answers(`http://127.0.0.1:${port}/`);
      return port;
    },
  });
}

/** VmRSS of a process, MiB (undefined once it has exited). */
export function rssMiB(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m === null ? undefined : Number(m[1]) / 1024;
  } catch {
    return undefined;
  }
}

/** Samples a process's VmRSS every `everyMs` until stopped; returns the peak, MiB. */
export function rssPeak(pid: number, everyMs = 50): { stop(): number } {
  let peak = rssMiB(pid) ?? 0;
  const timer = setInterval(() => {
    peak = Math.max(peak, rssMiB(pid) ?? 0);
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, rssMiB(pid) ?? 0);
    },
  };
}

/** Our own pid and every ancestor's (npm, sh): they match 'bench/' too. */
function ancestors(): Set<number> {
  const out = new Set<number>([process.pid]);
  let pid = process.ppid;
  for (let i = 0; i < 32 && pid > 1; i++) {
    out.add(pid);
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return out;
}

/** Other processes whose command line mentions bench/ (another benchmark), as "pid cmd". */
export function otherBenches(): string[] {
  let text: string;
  try {
    text = execFileSync('pgrep', ['-af', 'bench/'], { encoding: 'utf8' });
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
  const mine = ancestors();
  const ours = new Set([...live].map((c) => c.pid));
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .filter((l) => {
      const pid = Number(l.split(' ', 1)[0]);
      return !mine.has(pid) && !ours.has(pid) && !/^\d+ pgrep /.test(l);
    });
}

export interface QuietCheck {
  /** Seconds waited for other benchmarks (pgrep -f bench/) to finish. */
  readonly waited_for_benches_s: number;
  readonly benches_still_running: string[];
  /** Seconds waited for the CPU to calm down (tests, builds of other people). */
  readonly waited_for_cpu_s: number;
  /** Share of the machine busy over the last 3 s before measuring. */
  readonly cpu_busy_share_at_start: number;
}

/**
 * Waits until no other benchmark runs (polling every 5 s, up to benchesMaxMs), then
 * until the machine is mostly idle (busy share < maxBusy over 3 s, up to cpuMaxMs).
 * Measures anyway after that; the caller marks the results.
 */
export async function waitForQuietMachine(benchesMaxMs: number, cpuMaxMs: number, maxBusy: number, cpus: number, log: (s: string) => void): Promise<QuietCheck> {
  const t0 = Date.now();
  let others = otherBenches();
  if (others.length > 0) log(`waiting for other benchmarks to finish:\n  ${others.join('\n  ')}`);
  while (others.length > 0 && Date.now() - t0 < benchesMaxMs) {
    await sleep(5000);
    others = otherBenches();
  }
  const t1 = Date.now();
  let busy = await machineBusyShare(3000, cpus);
  if (busy >= maxBusy) log(`machine ${Math.round(busy * 100)}% busy before the start: waiting up to ${cpuMaxMs / 1000}s for it to calm down`);
  while (busy >= maxBusy && Date.now() - t1 < cpuMaxMs) busy = await machineBusyShare(3000, cpus);
  return {
    waited_for_benches_s: Math.round((t1 - t0) / 1000),
    benches_still_running: others,
    waited_for_cpu_s: Math.round((Date.now() - t1) / 1000),
    cpu_busy_share_at_start: Math.round(busy * 100) / 100,
  };
}

let hz: number | undefined;
function clockTicks(): number {
  if (hz === undefined) {
    try {
      hz = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      hz = 100;
    }
  }
  return hz;
}

/** CPU seconds (user + system, all threads) a process has used so far; 0 once it has exited. */
export function processCpuS(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / clockTicks();
  } catch {
    return 0;
  }
}

/** Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat. */
export function machineBusyS(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) / clockTicks();
}

export interface CpuUse {
  /** CPU seconds of each named process during the run. */
  readonly by_process_s: Readonly<Record<string, number>>;
  /** CPU seconds used by everything else on the machine: other work skews the figures. */
  readonly other_s: number;
  readonly window_s: number;
}

/** Starts a CPU account of the bench process and these children; stop() reports it. */
export function cpuAccount(children: Readonly<Record<string, number>>): { stop(): CpuUse } {
  const pids: Record<string, number> = { load_generator: process.pid, ...children };
  const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, processCpuS(pid)]));
  const busy0 = machineBusyS();
  const t0 = Date.now();
  return {
    stop() {
      const by: Record<string, number> = {};
      let ours = 0;
      for (const [k, pid] of Object.entries(pids)) {
        by[k] = Math.round((processCpuS(pid) - before[k]!) * 100) / 100;
        ours += by[k]!;
      }
      const other = Math.max(0, machineBusyS() - busy0 - ours);
      return { by_process_s: by, other_s: Math.round(other * 100) / 100, window_s: Math.round((Date.now() - t0) / 100) / 10 };
    },
  };
}

/** Share of the machine's CPU (0..1, all cores) busy over `ms`. */
export async function machineBusyShare(ms: number, cpus: number): Promise<number> {
  const b0 = machineBusyS();
  const t0 = Date.now();
  await sleep(ms);
  return (machineBusyS() - b0) / (((Date.now() - t0) / 1000) * cpus);
}
