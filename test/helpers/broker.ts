// Starts a real broker on a free port, in-process, with test-friendly defaults.
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config/env.ts';
import { startBroker, type Broker } from '../../src/app.ts';

export const ADMIN_TOKEN = 'test-admin-token';

export interface TestBroker {
  readonly broker: Broker;
  readonly url: string;
  /** Every log line the broker wrote, parsed. */
  readonly logs: Record<string, unknown>[];
  close(): Promise<void>;
}

export async function startTestBroker(env: Record<string, string> = {}): Promise<TestBroker> {
  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    ADMIN_TOKEN,
    INFER_THREADS: '2',
    // No gRPC front unless a test asks for one (with a free port: test/helpers/grpc.ts).
    GRPC_PORT: '0',
    // Data-plane threads: FRONT_THREADS=0 npm test runs the whole suite on the main thread.
    FRONT_THREADS: process.env.FRONT_THREADS ?? '2',
    // Active health checks would add GETs to every mock's request counts; the fleet tests turn them on.
    FLEET_HEALTH_CHECKS: 'false',
    // Suites send many refused credentials from one address; test/guard/identity.test.ts checks the throttle.
    ADMIN_AUTH_MAX_FAILURES: '0',
    // The suite can run against other models: MODEL_VA_PATH=... npm test
    ...(process.env.MODEL_VA_PATH ? { MODEL_VA_PATH: process.env.MODEL_VA_PATH } : {}),
    ...(process.env.MODEL_VB_PATH ? { MODEL_VB_PATH: process.env.MODEL_VB_PATH } : {}),
    ...env,
  });
  const logs: Record<string, unknown>[] = [];
  const logDestination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line));
      cb();
    },
  });
  const broker = await startBroker(config, { logDestination });
  await broker.waitReady();
  return { broker, url: `http://127.0.0.1:${broker.port}`, logs, close: () => broker.close(2000) };
}

/**
 * The first log line that matches, waiting up to `ms` for it: data-plane threads send their
 * lines to the one destination in batches, a little after the reply.
 */
export async function logLine(tb: TestBroker, match: (l: Record<string, unknown>) => boolean, ms = 3000): Promise<Record<string, unknown> | undefined> {
  for (const deadline = Date.now() + ms; ; ) {
    const line = tb.logs.find(match);
    if (line !== undefined || Date.now() > deadline) return line;
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

export async function postJson(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; body: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
}

/** The value of one Prometheus sample (sum over the samples whose labels include `labels`). */
export async function metricValue(url: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const l = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

/** A reply's JSON body, typed loosely: assertions check its shape. */
export async function json(res: Response): Promise<any> {
  return res.json();
}
