// Shared by the fleet tests: a broker in front of mock upstreams (FRONT_THREADS from the
// test helper: 2 data-plane threads), and small clients of its APIs.
import { request } from 'undici';
import { admin, json, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker } from '../helpers/fleet.ts';

interface Teardown {
  teardown(fn: () => unknown): void;
}

// Checks every 150 ms; a generous timeout, so that a loaded test machine is not taken for a dead server.
export const FAST_CHECKS = { healthCheck: { intervalMs: 150, timeoutMs: 3000, unhealthyThreshold: 2, healthyThreshold: 1 } };
export const broker = (t: Teardown, fleet: Record<string, unknown>, env: Record<string, string> = {}): Promise<TestBroker> => startFleetBroker(t, fleet, { INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'true', ...env });

export async function chat(tb: TestBroker, model: string, opts: { stream?: boolean; signal?: AbortSignal } = {}) {
  const res = await request(`${tb.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], stream: opts.stream ?? false }),
    signal: opts.signal,
  });
  const text = await res.body.text();
  return { status: res.statusCode, text, deployment: res.headers['x-broker-deployment'] as string | undefined, retryAfter: res.headers['retry-after'] as string | undefined };
}

export async function get(tb: TestBroker, path: string): Promise<any> {
  return json(await fetch(`${tb.url}${path}`, { headers: admin }));
}

export async function send(tb: TestBroker, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(`${tb.url}${path}`, { method, headers: { ...admin, 'content-type': 'application/json', ...headers }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: await json(res), headers: res.headers };
}

export async function until(cond: () => Promise<boolean>, what: string, tries = 400): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export const server = async (tb: TestBroker, id: string): Promise<any> => (await get(tb, '/api/orchestrator/servers')).servers.find((s: any) => s.id === id);
export const used = async (tb: TestBroker, model: string, n: number): Promise<string[]> => Promise.all(Array.from({ length: n }, async () => (await chat(tb, model)).deployment ?? 'none'));

