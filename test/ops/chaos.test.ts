// Chaos: an upstream killed mid-stream, an inference worker killed under load, and the
// broker closed (what SIGTERM does) with 200 streams open. In each, every request must end
// with exactly one terminal outcome (a whole reply, or one explicit error: an HTTP error
// status, or for a started stream one final error event and no [DONE]), the broker must
// count each request once, and the in-flight counters must come back to 0.
import t from 'tap';
import { startMock, startFleetBroker } from '../helpers/fleet.ts';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { metricValue, admin } from '../helpers/broker.ts';
import { fashionPngs, mapLimit } from '../helpers/images.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface StreamEnd {
  readonly status: number;
  /** `data: [DONE]` events. */
  readonly done: number;
  /** Error events (`data: {"error": ...}`) in a 200 stream, or 1 for an error status. */
  readonly errors: number;
  /** Token events before the end. */
  readonly tokens: number;
  /** The body ended (the connection did not just die). */
  readonly ended: boolean;
  readonly errorCodes: string[];
}

/** An OpenAI streaming chat request, read to its end. `started` resolves at the first token. */
function stream(url: string, model: string, started?: () => void): Promise<StreamEnd> {
  return (async () => {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, stream: true, messages: [{ role: 'user', content: 'tell me a long story' }] }),
    });
    if (res.status !== 200) {
      const body = (await res.json()) as { error: { code: string } };
      return { status: res.status, done: 0, errors: 1, tokens: 0, ended: true, errorCodes: [body.error.code] };
    }
    let text = '';
    let ended = false;
    let signalled = false;
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body!) {
        text += decoder.decode(chunk as Uint8Array, { stream: true });
        if (!signalled && text.includes('"content"')) {
          signalled = true;
          started?.();
        }
      }
      ended = true;
    } catch {
      ended = false;
    }
    if (!signalled) started?.();
    const events = text.split('\n\n').map((e) => e.trim()).filter((e) => e.startsWith('data:'));
    const errors = events.filter((e) => e.startsWith('data: {"error"'));
    return {
      status: 200,
      done: events.filter((e) => e === 'data: [DONE]').length,
      errors: errors.length,
      tokens: events.filter((e) => e.includes('"content"')).length,
      ended,
      errorCodes: errors.map((e) => (JSON.parse(e.slice(6)) as { error: { code: string } }).error.code),
    };
  })();
}

const oneTerminal = (e: StreamEnd): boolean => e.ended && e.done + e.errors === 1;

async function capacityInFlight(url: string): Promise<number> {
  const res = await fetch(`${url}/api/industrial/capacity`, { headers: admin });
  return ((await res.json()) as { totalInFlight: number }).totalInFlight;
}

/** Polls `read` until it returns `want` (the broker settles a little after the client saw the end). */
async function settles(read: () => Promise<number>, want: number, ms = 5000): Promise<number> {
  let v = await read();
  for (const deadline = Date.now() + ms; v !== want && Date.now() < deadline; v = await read()) await sleep(50);
  return v;
}

t.test('an upstream killed mid-stream: every stream ends with one error event, counters back to 0', async (t) => {
  const doomed = await createMockUpstream({ tokens: 1000, tps: 50 }); // closed by the test itself
  const tb = await startFleetBroker(t, { modelGroups: { chat: { deployments: [{ id: 'doomed', provider: 'openai', url: doomed.url, model: 'm', concurrencyLimit: 100 }] } } }, { INFER_ENABLED: 'false' });
  const n = 20;
  let started = 0;
  let allStarted!: () => void;
  const ready = new Promise<void>((r) => (allStarted = r));
  const ends = Array.from({ length: n }, () =>
    stream(tb.url, 'chat', () => {
      if (++started === n) allStarted();
    }),
  );
  await ready;
  t.equal(await capacityInFlight(tb.url), n, `${n} streams hold capacity`);
  await doomed.close(); // every upstream connection destroyed
  const results = await Promise.all(ends);
  t.equal(results.filter(oneTerminal).length, n, 'every stream ended with exactly one terminal event');
  t.equal(results.filter((r) => r.status === 200 && r.tokens > 0 && r.done === 0 && r.errors === 1).length, n, 'each: tokens, then one error event, no [DONE]');
  t.same([...new Set(results.flatMap((r) => r.errorCodes))], ['upstream_error'], 'the error event says upstream_error');
  t.equal(await settles(() => capacityInFlight(tb.url), 0), 0, 'capacity in flight back to 0');
  t.equal(await settles(() => metricValue(tb.url, 'llm_requests_total', { group: 'chat' }), n), n, 'each request counted once');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'chat', outcome: 'error', reason: 'midstream_error' }), n, 'as a midstream error (outcome error)');
  t.equal(await metricValue(tb.url, 'llm_midstream_errors_total', { deployment: 'doomed' }), n);
});

t.test('an inference worker killed under load: one answer per request, the pool recovers', async (t) => {
  const mock = await startMock(t);
  const tb = await startFleetBroker(t, { modelGroups: { chat: { deployments: [{ id: 'd', provider: 'openai', url: mock.url, model: 'm' }] } } }, { INFER_THREADS: '2' });
  const images = await fashionPngs(8);
  const infer = tb.broker.infer!;
  const n = 60;
  let sent = 0;
  const statuses = mapLimit(Array.from({ length: n }, (_, i) => images[i % images.length]!), 12, async (img) => {
    sent++;
    const res = await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image_b64: img.b64 }) });
    const body = (await res.json()) as { error?: { code: string } };
    return { status: res.status, code: body.error?.code };
  });
  while (sent < 15) await sleep(5);
  const killed = infer.currentPool.threads[0]!;
  await killed.terminate();
  const results = await statuses;
  t.equal(results.length, n, 'every request got exactly one HTTP answer');
  const failed = results.filter((r) => r.status !== 200);
  t.ok(failed.every((r) => r.status >= 500 && r.code !== undefined), `failures are explicit 5xx with a code: ${JSON.stringify(failed.slice(0, 3))}`);
  t.ok(results.filter((r) => r.status === 200).length >= n - 24, `most requests still succeeded (${results.filter((r) => r.status === 200).length}/${n})`);
  // Each request counted once, success or failure (client mistakes: none here).
  const success = () => metricValue(tb.url, 'inference_request_success_total');
  const failure = () => metricValue(tb.url, 'inference_request_failure_total');
  t.equal((await success()) + (await failure()), n, 'successes + failures = requests');
  t.equal(await success(), n - failed.length, 'successes match the 200s');
  t.ok((await metricValue(tb.url, 'inference_worker_failures_total')) >= 1, 'the crash is counted');
  t.equal(await settles(() => metricValue(tb.url, 'inference_workers'), 2), 2, 'the pool is back to 2 workers');
  t.equal(await metricValue(tb.url, 'inference_pool_queue_size'), 0, 'nothing left queued');
  // A request of the data plane forwarded to the control plane counts as active itself, on its thread.
  t.ok((await metricValue(tb.url, 'http_requests_active')) <= 1, 'no request left active');
  const after = await mapLimit(images, 4, async (img) => (await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image_b64: img.b64 }) })).status);
  t.same([...new Set(after)], [200], 'inference works after the crash');
});

t.test('Broker.close (SIGTERM) with 200 open streams: each ends with one shutting_down event', async (t) => {
  const mock = await startMock(t, { tokens: 100_000, tps: 20 });
  const tb = await startFleetBroker(t, { modelGroups: { chat: { deployments: [{ id: 'long', provider: 'openai', url: mock.url, model: 'm', concurrencyLimit: 500 }] } } }, { INFER_ENABLED: 'false' });
  const n = 200;
  let started = 0;
  let allStarted!: () => void;
  const ready = new Promise<void>((r) => (allStarted = r));
  const ends = Array.from({ length: n }, () =>
    stream(tb.url, 'chat', () => {
      if (++started === n) allStarted();
    }),
  );
  await ready;
  t.equal(await capacityInFlight(tb.url), n, `${n} streams hold capacity`);
  const capacity = tb.broker.governance.capacity;
  await tb.broker.close(300); // what main.ts does on SIGTERM, with a short grace
  const results = await Promise.all(ends);
  t.equal(results.filter(oneTerminal).length, n, 'every stream ended with exactly one terminal event');
  t.equal(results.filter((r) => r.tokens > 0 && r.done === 0 && r.errors === 1).length, n, 'each: tokens, then one error event, no [DONE]');
  t.same([...new Set(results.flatMap((r) => r.errorCodes))], ['shutting_down'], 'the error event says shutting_down');
  t.equal(capacity.totals().totalInFlight, 0, 'capacity in flight back to 0');
  t.equal(await settles(async () => mock.stats.open, 0), 0, 'every upstream request was aborted');
});
