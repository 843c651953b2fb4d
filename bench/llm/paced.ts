// Open-loop load at a fixed rate: request i is due at t0 + i / rate, whether or not
// earlier ones have been answered, over a raw HTTP/1.1 keep-alive client (one request
// in flight per connection, a new connection when all are busy, up to a cap).
//
// Why not autocannon's overallRate: autocannon gives each connection rate/connections
// requests per second and sends them back to back as soon as its one-second budget
// resets, then idles (lib/httpClient.js, reqsMadeThisSecond). At 2,000/s over 20
// connections that is a burst of 2,000 requests at the top of every second, and what
// it reports is the queueing of that burst, not the cost of a request at a steady rate:
// in one bench:llm run at 2,000/s, p50 0.75 ms direct and 2.5 ms through the broker
// with autocannon, against 0.08 ms and 0.51 ms with this client. More connections make
// the burst worse, not better. bench:llm records both; the overhead goals use this one.
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { round, summarize, type Latency } from '../lib/stats.ts';

export interface PacedOptions {
  readonly url: string;
  readonly body: string;
  readonly headers?: Readonly<Record<string, string>>;
  /** Requests per second. */
  readonly rate: number;
  readonly durationS: number;
  readonly maxConnections: number;
  /** A request with no complete reply after this long counts as a timeout. */
  readonly timeoutMs: number;
}

export interface PacedResult {
  readonly target_rps: number;
  readonly duration_s: number;
  readonly sent: number;
  readonly ok: number;
  readonly non_2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  /** 2xx replies per second over the sending window. */
  readonly achieved_rps: number;
  /** From the request's first byte written to the reply's last byte read: what the goals use. */
  readonly latency: Latency;
  /** From the time the request was due: adds the generator's own lateness (timer tick, no free connection). */
  readonly latency_from_due: Latency;
  /** How late requests went out, ms: small means the rate was held. */
  readonly send_lag_p99_ms: number;
  readonly connections: number;
  /** The rate was held: achieved >= 95 % of target, no errors or timeouts, p99 send lag < 5 ms. */
  readonly sustained: boolean;
}

const CRLF2 = Buffer.from('\r\n\r\n');

class Conn {
  busy = false;
  dead = false;
  dueAt = 0;
  sentAt = 0;
  private buf: Buffer | null = null;
  private need = -1;
  private status = 0;
  readonly socket: Socket;

  constructor(
    port: number,
    private readonly onReply: (c: Conn, status: number) => void,
    private readonly onDead: (c: Conn) => void,
  ) {
    this.socket = connect({ port, host: '127.0.0.1', noDelay: true });
    this.socket.on('data', (chunk: Buffer) => this.data(chunk));
    this.socket.on('error', () => this.die());
    this.socket.on('close', () => this.die());
  }

  send(request: Buffer, dueAt: number): void {
    this.busy = true;
    this.dueAt = dueAt;
    this.sentAt = performance.now();
    this.socket.write(request);
  }

  private data(chunk: Buffer): void {
    this.buf = this.buf === null ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.need < 0) {
      const end = this.buf.indexOf(CRLF2);
      if (end < 0) return;
      const head = this.buf.toString('latin1', 0, end);
      this.status = Number(head.slice(9, 12));
      const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      // Every server here answers a non-streamed completion with a Content-Length.
      if (cl === null) return this.destroy();
      this.need = end + 4 + Number(cl[1]);
    }
    if (this.buf.length < this.need) return;
    this.buf = null;
    this.need = -1;
    this.busy = false;
    this.onReply(this, this.status);
  }

  private die(): void {
    if (this.dead) return;
    this.dead = true;
    this.onDead(this);
  }

  destroy(): void {
    this.die();
    this.socket.destroy();
  }
}

export async function paced(opts: PacedOptions): Promise<PacedResult> {
  const u = new URL(opts.url);
  const port = Number(u.port);
  const body = Buffer.from(opts.body);
  const extra = Object.entries(opts.headers ?? {})
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  const request = Buffer.concat([
    Buffer.from(`POST ${u.pathname} HTTP/1.1\r\nhost: ${u.host}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n${extra}\r\n`, 'latin1'),
    body,
  ]);

  const total = Math.round(opts.rate * opts.durationS);
  const interval = 1000 / opts.rate;
  const lat = new Float64Array(total);
  const fromDue = new Float64Array(total);
  const lag = new Float64Array(total);
  let nLat = 0;
  let sent = 0;
  let ok = 0;
  let non2xx = 0;
  let errors = 0;
  let timeouts = 0;
  let next = 0;
  let lastOkAt = 0;
  const conns = new Set<Conn>();
  const idle: Conn[] = [];
  const backlog: number[] = [];
  let opened = 0;

  let finish: () => void = () => {};
  const finished = new Promise<void>((r) => (finish = r));
  const checkDone = (): void => {
    if (next >= total && backlog.length === 0 && [...conns].every((c) => !c.busy)) finish();
  };

  const onReply = (c: Conn, status: number): void => {
    const now = performance.now();
    if (status >= 200 && status < 300) {
      ok++;
      lastOkAt = now;
      lat[nLat] = now - c.sentAt;
      fromDue[nLat] = now - c.dueAt;
      nLat++;
    } else non2xx++;
    const due = backlog.shift();
    if (due !== undefined) return void fire(c, due);
    idle.push(c);
    if (next >= total) checkDone();
  };
  const onDead = (c: Conn): void => {
    conns.delete(c);
    const i = idle.indexOf(c);
    if (i >= 0) idle.splice(i, 1);
    // A connection lost under a request (reset, or closed by the server) is an error.
    if (c.busy) errors++;
    if (next >= total) checkDone();
  };
  const open = (): Conn => {
    const c = new Conn(port, onReply, onDead);
    conns.add(c);
    opened++;
    return c;
  };
  const fire = (c: Conn, due: number): void => {
    lag[sent] = performance.now() - due;
    sent++;
    c.send(request, due);
  };
  const dispatch = (due: number): void => {
    let c = idle.pop();
    while (c !== undefined && c.dead) c = idle.pop();
    if (c === undefined && conns.size < opts.maxConnections) c = open();
    if (c === undefined) backlog.push(due);
    else fire(c, due);
  };

  // A few connections up front, so the first requests do not pay for the TCP handshake.
  for (let i = 0; i < Math.min(8, opts.maxConnections); i++) idle.push(open());
  await new Promise((r) => setTimeout(r, 50));

  const t0 = performance.now();
  const tick = (): void => {
    const now = performance.now();
    while (next < total && t0 + next * interval <= now) dispatch(t0 + next++ * interval);
    if (next < total) setTimeout(tick, Math.max(0, t0 + next * interval - performance.now()));
    else checkDone();
  };
  tick();

  // Requests stuck past the timeout: count them and drop their connection.
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const c of conns) {
      if (c.busy && now - c.sentAt > opts.timeoutMs) {
        timeouts++;
        c.busy = false;
        c.destroy();
      }
    }
    if (next >= total) checkDone();
  }, 100);
  const hardStop = new Promise<void>((r) => setTimeout(r, opts.durationS * 1000 + opts.timeoutMs + 2000));
  await Promise.race([finished, hardStop]);
  clearInterval(sweep);
  timeouts += backlog.length;
  for (const c of conns) {
    if (c.busy) timeouts++;
    c.busy = false;
    c.socket.destroy();
  }

  const windowS = Math.max(opts.durationS, (lastOkAt - t0) / 1000);
  const achieved = ok / windowS;
  const lagSorted = lag.subarray(0, sent).sort();
  const lagP99 = lagSorted.length > 0 ? lagSorted[Math.min(lagSorted.length - 1, Math.ceil(0.99 * lagSorted.length) - 1)]! : NaN;
  return {
    target_rps: opts.rate,
    duration_s: opts.durationS,
    sent,
    ok,
    non_2xx: non2xx,
    errors,
    timeouts,
    achieved_rps: round(achieved, 1),
    latency: summarize(lat.subarray(0, nLat)),
    latency_from_due: summarize(fromDue.subarray(0, nLat)),
    send_lag_p99_ms: round(lagP99),
    connections: opened,
    sustained: achieved >= 0.95 * opts.rate && errors === 0 && timeouts === 0 && non2xx === 0 && lagP99 < 5,
  };
}
