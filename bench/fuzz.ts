// npm run fuzz -- [--seed N] [--count N] [--concurrency N]
//
// Sends `count` (default 10,000) seeded malformed requests over every route to a real
// broker (a child process with data-plane threads, the real models and a mock LLM fleet;
// bench/lib/fuzz.ts) and checks it survives them: no crash, no 5xx but the documented ones
// (DOCUMENTED_5XX), still ready and serving, capacity counters back to 0, RSS at the end
// within 10 % of RSS half way through the run. Prints a summary, writes
// bench/results/fuzz.json, exits 1 when the run fails.
// The same seed gives the same requests (bench/lib/fuzz-gen.ts).
import { parseArgs } from 'node:util';
import { runFuzz } from './lib/fuzz.ts';
import { writeResults } from './lib/report.ts';

const { values } = parseArgs({
  options: { seed: { type: 'string', default: '1' }, count: { type: 'string', default: '10000' }, concurrency: { type: 'string', default: '16' } },
});
const num = (name: string, v: string | undefined): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got ${v}`);
  return n;
};
const report = await runFuzz({ seed: num('seed', values.seed), count: num('count', values.count), concurrency: num('concurrency', values.concurrency) || 16, log: (l) => console.log(l) });
const file = writeResults('fuzz', report);
console.log(`\n${report.count} requests in ${report.duration_s} s (${report.requests_per_s}/s), seed ${report.seed}`);
console.log('outcomes:', JSON.stringify(report.outcomes));
console.log('5xx:', JSON.stringify(report.five_xx));
const mib = (kb: number) => (kb / 1024).toFixed(0);
const r = report.rss_kb;
console.log(`RSS ${mib(r.start)} MiB at start, ${mib(r.half_way)} MiB half way, ${mib(r.peak)} MiB peak, ${mib(r.end)} MiB at the end: ${r.growth_pct} % over the second half (the rule), ${r.growth_from_start_pct} % from the start`);
console.log(`ready after: ${report.ready_after}; capacity in flight after: ${report.in_flight_after}`);
console.log(report.pass ? 'PASS' : `FAIL:\n- ${report.failures.join('\n- ')}`);
if (report.unexpected.length > 0) console.log('undocumented 5xx (first ones):', JSON.stringify(report.unexpected.slice(0, 5), null, 1));
if (report.hung.length > 0) console.log('no reply (first ones):', JSON.stringify(report.hung.slice(0, 5), null, 1));
console.log(`results: ${file}`);
process.exit(report.pass ? 0 : 1);
