// The fuzz run behind `npm run fuzz` and test/ops/fuzz.test.ts: a real broker as a child
// process (data-plane threads, real models, the ops mock fleet), fed the generator's
// malformed requests over raw sockets, several at a time. Pass: the broker never exits,
// answers no 5xx but the documented ones, is still ready and serving at the end, its
// capacity counters are back to 0, and its RSS at the end is within 10 % of its RSS half way
// through the run (a leak grows with the requests; V8's heaps grow to their working size in
// the first half and stay there until they are idle long enough).
import { connect } from 'node:net';
import { fuzzCases, type FuzzCase } from './fuzz-gen.ts';
import { startOpsFleet } from './ops-fleet.ts';
import { startBroker, type BrokerRuntime, type Child } from './process.ts';
import { memoryStatus } from './proc.ts';
import { fashionPng } from './images.ts';
import { machine } from './report.ts';
import { sleep } from './stats.ts';

/**
 * 5xx codes a malformed request may rightly get: each is the fleet's or the load's doing,
 * not a broker fault. Any other 5xx (500 `internal` above all) fails the run.
 */
export const DOCUMENTED_5XX: Readonly<Record<string, string>> = {
  upstream_error: '502: an upstream answered 5xx or broke before its reply (the mock refuses some bodies the broker passes on)',
  upstream_unavailable: '503: every deployment of the group refused (group flaky: its first deployment always answers 429)',
  upstream_timeout: '504: an upstream did not answer in time',
  queue_timeout: '504: group tight (concurrencyLimit 1, slow upstream) waited longer than scheduler.maxWaitMs',
  overloaded: '503: the inference queue was full',
};

export interface FuzzOptions {
  readonly seed: number;
  readonly count: number;
  /** Requests in flight at once (default 16). */
  readonly concurrency?: number;
  /** FRONT_THREADS of the broker (default 2). */
  readonly frontThreads?: number;
  /** How the broker runs (default tsx: the sources, as `npm run fuzz` always ran it). */
  readonly runtime?: BrokerRuntime;
  readonly log?: (line: string) => void;
  /** Idle seconds after the warm-up before the start RSS is read (default 25: once idle heaps have shrunk). */
  readonly idleS?: number;
  /** Requests of the warm-up pass (default 300). */
  readonly warmup?: number;
  /** How far above the RSS half way through the run RSS may end (default 10 %), and how long to wait for it (default 60 s). */
  readonly rssLimitPct?: number;
  readonly settleS?: number;
}

interface Outcome {
  /** HTTP status, or 'closed' (closed without a reply), 'no_reply' (nothing before the timeout). */
  readonly status: number | 'closed' | 'no_reply';
  readonly code: string | undefined;
  readonly head: string;
}

export interface FuzzReport {
  readonly pass: boolean;
  readonly failures: string[];
  readonly seed: number;
  readonly count: number;
  readonly concurrency: number;
  readonly duration_s: number;
  readonly requests_per_s: number;
  readonly outcomes: Record<string, number>;
  readonly by_family: Record<string, Record<string, number>>;
  readonly error_codes: Record<string, number>;
  readonly five_xx: Record<string, number>;
  readonly documented_5xx: Readonly<Record<string, string>>;
  readonly unexpected: unknown[];
  readonly hung: unknown[];
  readonly reset_large_body: number;
  readonly reset_examples: unknown[];
  readonly partial_requests: number;
  readonly unparsable_requests: number;
  readonly broker_exited: string | null;
  readonly ready_after: boolean;
  readonly serving_after: { chat_stream: number; infer: number };
  readonly in_flight_after: number | null;
  readonly rss_limit_pct: number;
  readonly rss_kb: {
    readonly before_warmup: number;
    readonly start: number;
    readonly half_way: number;
    readonly peak: number;
    readonly end: number;
    readonly growth_pct: number;
    readonly growth_from_start_pct: number;
  };
  readonly machine: ReturnType<typeof machine>;
}

const ADMIN_TOKEN = 'fuzz-admin-token-0123456789abcdef';
const REPLY_TIMEOUT_MS = 15_000;
const PARTIAL_WAIT_MS = 300;
/** Longest wait for RSS to come back after the run. */
const RSS_SETTLE_S = 60;
/** Requests of the warm-up pass before RSS is measured at the start. */
const WARMUP_CASES = 300;
/** Idle time before the start RSS is read. */
const IDLE_SHRINK_S = 25;
/** How long an unparsable request gets: uWS closes most of them at once, the others after 10 s idle. */
const UNPARSABLE_WAIT_MS = 1000;

/** Writes one case on a fresh connection and reads the first reply (or its absence). */
function send(port: number, c: FuzzCase): Promise<Outcome> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    sock.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let settled = false;
    const finish = (o: Outcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(o);
    };
    const parse = (): Outcome | undefined => {
      // Skip interim replies (100 Continue).
      while (/^HTTP\/1\.[01] 1\d\d /.test(buf.toString('latin1', 0, 13))) {
        const e = buf.indexOf('\r\n\r\n');
        if (e < 0) return undefined;
        buf = buf.subarray(e + 4);
      }
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return undefined;
      const headText = buf.subarray(0, end).toString('latin1');
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(headText)?.[1] ?? NaN);
      if (!Number.isFinite(status)) return { status: 'closed', code: undefined, head: headText.slice(0, 200) };
      const body = buf.subarray(end + 4);
      const code = /"code"\s*:\s*"([a-z_]+)"/.exec(body.subarray(0, 4096).toString('utf8'))?.[1];
      const len = /\r\ncontent-length: *(\d+)/i.exec(headText)?.[1];
      const chunked = /\r\ntransfer-encoding: *chunked/i.test(headText);
      const complete =
        c.method === 'HEAD' || status === 204 || status === 304 || (len !== undefined ? body.length >= Number(len) : chunked ? body.subarray(-5).toString() === '0\r\n\r\n' : false);
      return complete ? { status, code, head: headText.slice(0, 200) } : undefined;
    };
    sock.on('data', (d: Buffer) => {
      // Keep the head and the start of the body; a long stream only needs its tail checked.
      buf = buf.length < 65_536 ? Buffer.concat([buf, d]) : Buffer.concat([buf.subarray(0, 32_768), d.subarray(-16)]);
      const o = parse();
      if (o !== undefined) finish(o);
    });
    sock.on('error', () => undefined); // EPIPE, ECONNRESET: the close below says what happened
    sock.on('close', () => finish(parse() ?? { status: buf.length > 0 ? (/^HTTP\/1\.[01] (\d{3})/.test(buf.toString('latin1', 0, 16)) ? Number(buf.toString('latin1', 9, 12)) : 'closed') : 'closed', code: undefined, head: buf.subarray(0, 200).toString('latin1') }));
    const timer = setTimeout(() => finish({ status: 'no_reply', code: undefined, head: buf.subarray(0, 200).toString('latin1') }), c.partial ? PARTIAL_WAIT_MS : c.unparsable ? UNPARSABLE_WAIT_MS : REPLY_TIMEOUT_MS);
    sock.once('connect', async () => {
      for (const p of c.pieces) {
        if (settled || sock.destroyed) return;
        sock.write(p);
        if (c.gapMs > 0) await sleep(c.gapMs);
      }
    });
  });
}

async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  const r = await fetch(url, { headers, signal: AbortSignal.timeout(10_000) });
  return { status: r.status, body: await r.text() };
}

async function post(url: string, body: unknown): Promise<number> {
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) });
  await r.text();
  return r.status;
}

/** A few well-formed requests of each kind: lazy start-up work happens before RSS is measured. */
async function valid(url: string, pngB64: string): Promise<{ chat_stream: number; infer: number }> {
  const [chat_stream, infer] = await Promise.all([
    post(`${url}/v1/chat/completions`, { model: 'chat', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
    post(`${url}/v1/infer`, { image_b64: pngB64 }),
    post(`${url}/api/chat`, { model: 'chat', messages: [{ role: 'user', content: 'hi' }] }),
    post(`${url}/v1/completions`, { model: 'chat', prompt: 'hi' }),
  ]);
  return { chat_stream: chat_stream!, infer: infer! };
}

const rss = (c: Child): number => memoryStatus(c.pid).rss_kb;

/** Settled RSS: the lowest of a few samples a second apart (a GC may be running at any one of them). */
async function settledRss(c: Child, samples = 5): Promise<number> {
  let low = Infinity;
  for (let i = 0; i < samples; i++) {
    low = Math.min(low, rss(c));
    await sleep(1000);
  }
  return low;
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const log = o.log ?? (() => undefined);
  const concurrency = o.concurrency ?? 16;
  const rssLimitPct = o.rssLimitPct ?? 10;
  const fleet = await startOpsFleet();
  let broker: Child | undefined;
  try {
    broker = await startBroker('broker', {
      BROKER_CONFIG: fleet.path,
      ADMIN_TOKEN,
      FRONT_THREADS: String(o.frontThreads ?? 2),
      INFER_THREADS: '1',
      INFER_INTRA_OP_THREADS: '1',
      BROKER_FF_QUOTA_ENFORCEMENT: 'true',
      BROKER_FF_STICKY_ROUTING: 'true',
      LOG_LEVEL: 'error',
    }, [], undefined, o.runtime);
    const b = broker;
    const { png } = await fashionPng(0);
    const pngB64 = png.toString('base64');
    for (let i = 0; i < 5; i++) await valid(b.url, pngB64);
    const rssBeforeWarmup = await settledRss(b, 3);
    // Warm-up: a short fuzz pass of another seed, so that the start RSS already holds the code
    // the error paths compile to (the 10 % is about what a run leaves behind, not about JIT code).
    const warm = fuzzCases(o.seed ^ 0x5eed, o.warmup ?? WARMUP_CASES, { pngB64, adminToken: ADMIN_TOKEN });
    await Promise.all(Array.from({ length: concurrency }, async () => {
      for (let next = warm.next(); !next.done; next = warm.next()) await send(b.port, next.value);
    }));
    // Idle V8 heaps shrink some 15-25 s after load: measure after that, as at the end.
    await sleep((o.idleS ?? IDLE_SHRINK_S) * 1000);
    const rssStart = await settledRss(b);
    let rssPeak = rssStart;
    log(`broker pid ${b.pid} on ${b.url}; RSS at start ${(rssStart / 1024).toFixed(0)} MiB; ${o.count} cases, seed ${o.seed}, ${concurrency} at once`);

    const outcomes: Record<string, number> = {};
    const byFamily: Record<string, Record<string, number>> = {};
    const errorCodes: Record<string, number> = {};
    const fiveXx: Record<string, number> = {};
    const unexpected: unknown[] = [];
    const hung: unknown[] = [];
    const resets: unknown[] = [];
    let partial = 0;
    let unparsable = 0;
    let done = 0;
    let exited: string | null = null;
    const cases = fuzzCases(o.seed, o.count, { pngB64, adminToken: ADMIN_TOKEN });
    let taken = 0;
    let t0 = 0;
    let pausedMs = 0;
    /** Sends cases until `limit` of them have been taken (the run is in two halves). */
    const sendUntil = (limit: number) =>
      Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (taken < limit) {
            if (exited !== null) return;
            const next = cases.next();
            if (next.done) return;
            taken++;
            const c = next.value;
            const t1 = performance.now();
            const r = await send(b.port, c);
            if (process.env.FUZZ_DEBUG && performance.now() - t1 > 1000) log(`slow ${Math.round(performance.now() - t1)} ms: ${c.method} ${c.path} ${c.tags.join(',')} -> ${r.status} ${r.code ?? ''} ${JSON.stringify(r.head.slice(0, 80))}`);
            const key = String(r.status);
            outcomes[key] = (outcomes[key] ?? 0) + 1;
            (byFamily[c.family] ??= {})[key] = (byFamily[c.family]![key] ?? 0) + 1;
            if (r.code !== undefined) errorCodes[r.code] = (errorCodes[r.code] ?? 0) + 1;
            if (c.partial) partial++;
            const ms = performance.now() - t1;
            const detail = { index: c.index, method: c.method, path: c.path, tags: c.tags, status: r.status, code: r.code ?? null, head: r.head, ms: Math.round(ms) };
            if (typeof r.status === 'number' && r.status >= 500) {
              const k = `${r.status} ${r.code ?? 'no code'}`;
              fiveXx[k] = (fiveXx[k] ?? 0) + 1;
              if (r.code === undefined || !(r.code in DOCUMENTED_5XX)) unexpected.push(detail);
            }
            // A well-formed request is owed a reply; only incomplete or unparsable ones may go without.
            // A large body answered before it was read (404, 405, 401...) on a `connection: close`
            // request: the broker closes while the client still writes, and the kernel's reset
            // can drop the reply before the client reads it. Counted apart (see docs/operations.md).
            const bodyBytes = c.pieces.reduce((n, p) => n + p.length, 0);
            if (r.status === 'closed' && bodyBytes > 65_536 && ms < 2000 && !c.partial && !c.unparsable) resets.push(detail);
            else if ((r.status === 'no_reply' || r.status === 'closed') && !c.partial && !c.unparsable) hung.push(detail);
            if (c.unparsable) unparsable++;
            if (++done % 500 === 0) {
              const e = b.exited();
              if (e !== undefined) exited = String(e);
              else rssPeak = Math.max(rssPeak, rss(b));
              log(`${done}/${o.count} (${Math.round(done / ((performance.now() - t0 - pausedMs) / 1000))}/s) RSS ${(rss(b) / 1024).toFixed(0)} MiB`);
            }
          }
        }),
      );
    t0 = performance.now();
    // Half way, RSS once more: the first half grows every thread's V8 heap (its young
    // generation above all) to its working size under this load, which V8 gives back only
    // when its memory reducer finds the thread idle, sometimes minutes later. Growth over
    // the second half, at that working size, is what a leak would show.
    await sendUntil(Math.floor(o.count / 2));
    const p0 = performance.now();
    const rssHalf = exited === null ? await settledRss(b, 3) : NaN;
    pausedMs = performance.now() - p0;
    log(`half way: RSS ${(rssHalf / 1024).toFixed(0)} MiB`);
    await sendUntil(o.count);
    const seconds = (performance.now() - t0 - pausedMs) / 1000;
    log(`done in ${seconds.toFixed(1)} s; checking the broker`);
    const e = b.exited();
    if (e !== undefined) exited = String(e);

    const failures: string[] = [];
    let readyAfter = false;
    let servingAfter = { chat_stream: 0, infer: 0 };
    let inFlight: number | null = null;
    let rssEnd = NaN;
    if (exited !== null) {
      failures.push(`the broker exited (${exited}):\n${b.output().slice(-2000)}`);
    } else {
      readyAfter = (await get(`${b.url}/ready`)).status === 200;
      if (!readyAfter) failures.push('the broker is not ready after the run');
      servingAfter = await valid(b.url, pngB64);
      if (servingAfter.chat_stream !== 200 || servingAfter.infer !== 200) failures.push(`the broker no longer serves well-formed requests: ${JSON.stringify(servingAfter)}`);
      // Every LLM request ended: the shared capacity counters are back to 0. Read from
      // /metrics: the fuzz's refused admin credentials get its address throttled on admin
      // routes (ADMIN_AUTH_MAX_FAILURES), as they should.
      for (let i = 0; i < 50; i++) {
        const text = (await get(`${b.url}/metrics`)).body;
        inFlight = [...text.matchAll(/^broker_capacity_in_flight\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
        if (inFlight === 0) break;
        await sleep(100);
      }
      if (inFlight !== 0) failures.push(`${inFlight} LLM requests still hold capacity after the run`);
      // Against RSS half way (see above); the V8 heaps may also shrink once idle, which
      // comes in the wait, up to RSS_SETTLE_S.
      const bound = rssHalf * (1 + rssLimitPct / 100);
      for (const deadline = performance.now() + (o.settleS ?? RSS_SETTLE_S) * 1000; ; ) {
        rssEnd = await settledRss(b);
        log(`RSS ${(rssEnd / 1024).toFixed(0)} MiB`);
        if (rssEnd <= bound || performance.now() > deadline) break;
      }
      if (rssEnd > bound) failures.push(`RSS ${(rssEnd / 1024).toFixed(0)} MiB is more than ${rssLimitPct} % above the ${(rssHalf / 1024).toFixed(0)} MiB half way through the run: it grew with the requests`);
    }
    if (unexpected.length > 0) failures.push(`${unexpected.length} undocumented 5xx replies`);
    if (hung.length > 0) failures.push(`${hung.length} complete, well-formed requests got no reply (closed, or nothing in ${REPLY_TIMEOUT_MS / 1000} s)`);
    return {
      pass: failures.length === 0,
      failures,
      seed: o.seed,
      count: o.count,
      concurrency,
      duration_s: Math.round(seconds * 10) / 10,
      requests_per_s: Math.round(o.count / seconds),
      outcomes,
      by_family: byFamily,
      error_codes: errorCodes,
      five_xx: fiveXx,
      documented_5xx: DOCUMENTED_5XX,
      unexpected: unexpected.slice(0, 20),
      hung: hung.slice(0, 20),
      reset_large_body: resets.length,
      reset_examples: resets.slice(0, 5),
      partial_requests: partial,
      unparsable_requests: unparsable,
      broker_exited: exited,
      ready_after: readyAfter,
      serving_after: servingAfter,
      in_flight_after: inFlight,
      rss_limit_pct: rssLimitPct,
      rss_kb: {
        before_warmup: rssBeforeWarmup,
        start: rssStart,
        half_way: rssHalf,
        peak: Math.max(rssPeak, Number.isFinite(rssEnd) ? rssEnd : 0),
        end: rssEnd,
        // The rule: end against half way. From the start: the heaps' growth to their working size, and any leak.
        growth_pct: Math.round(((rssEnd - rssHalf) / rssHalf) * 1000) / 10,
        growth_from_start_pct: Math.round(((rssEnd - rssStart) / rssStart) * 1000) / 10,
      },
      machine: machine(),
    };
  } finally {
    await broker?.stop(10_000);
    await fleet.close();
  }
}
