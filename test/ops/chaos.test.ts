// Chaos: an upstream killed mid-stream, an inference worker killed under load (over HTTP,
// v2 REST and gRPC), and the broker closed (what SIGTERM does) with 200 streams open. In
// each, every request must end with exactly one terminal outcome (a whole reply, or one
// explicit error: an HTTP error status, or for a started stream one final error event and
// no [DONE]), the broker must count each request once, and the in-flight counters must
// come back to 0. A request lost with its inference worker is retryable: 503 (gRPC
// UNAVAILABLE) inference_worker_lost with a retry time.
import t from 'tap';
import { startMock, startFleetBroker } from '../helpers/fleet.ts';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { metricValue, admin } from '../helpers/broker.ts';
import { fashionPngs, mapLimit } from '../helpers/images.ts';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { clients, md, startGrpcBroker, statusDetailsOf, unary } from '../helpers/grpc.ts';
import { V2Client, lengthPrefixed } from '../helpers/v2-client.ts';
import { V2_PROTO } from '../../src/infer/v2/grpc.ts';
import type { InferPool } from '../../src/infer/pool.ts';

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

/**
 * Kills the pool's one worker at a moment when it surely holds a batch, and no native work:
 * its batch has just finished while requests wait (the pool calls its listeners before it
 * hands over the next batch). With one worker taking one batch at a time
 * (INFER_TASKS_PER_WORKER=1) the worker is idle then, so terminate() never lands in the
 * middle of a sharp or onnxruntime call (an addon's callback into a terminating thread
 * can abort the whole process: "terminate called after throwing an instance of
 * 'Napi::Error'"); and the next batch, handed to it right after, is surely lost. A
 * non-empty queue alone is not enough: results posted before the kill still arrive.
 */
function killWorkersUnderLoad(pool: InferPool): { readonly fired: () => boolean; readonly done: Promise<void> } {
  let armed = true;
  let killed!: () => void;
  const done = new Promise<void>((r) => (killed = r));
  pool.onExecute(() => {
    if (!armed || pool.queueSize === 0) return;
    armed = false;
    void Promise.all(pool.threads.map((w) => w.terminate())).then(() => killed());
  });
  return { fired: () => !armed, done };
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

t.test('inference workers killed under load: one answer per request, the lost ones 503 inference_worker_lost, the pool recovers', async (t) => {
  const mock = await startMock(t);
  const tb = await startFleetBroker(t, { modelGroups: { chat: { deployments: [{ id: 'd', provider: 'openai', url: mock.url, model: 'm' }] } } }, { INFER_THREADS: '1', INFER_TASKS_PER_WORKER: '1' });
  const images = await fashionPngs(8);
  const infer = tb.broker.infer!;
  const n = 60;
  const kill = killWorkersUnderLoad(infer.currentPool);
  const results = await mapLimit(range(n), 12, async (i) => {
    const res = await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': `chaos-${i}` }, body: JSON.stringify({ image_b64: images[i % images.length]!.b64 }) });
    const body = (await res.json()) as { error?: { code: string; message: string; request_id: string } };
    return { status: res.status, code: body.error?.code, message: body.error?.message, requestId: body.error?.request_id, sentId: `chaos-${i}`, retryAfter: res.headers.get('retry-after') };
  });
  t.ok(kill.fired(), 'the workers were killed under load');
  await kill.done;
  t.equal(results.length, n, 'every request got exactly one HTTP answer');
  const failed = results.filter((r) => r.status !== 200);
  t.ok(failed.length >= 1, 'the batch in a worker when it died failed');
  const retryable = (r: (typeof results)[number]) => r.status === 503 && r.code === 'inference_worker_lost' && Number(r.retryAfter) >= 1 && r.requestId === r.sentId && /worker .* died/.test(r.message ?? '');
  t.same(failed.filter((r) => !retryable(r)), [], `each failure is 503 inference_worker_lost with Retry-After, its request id and a message: ${JSON.stringify(failed.slice(0, 2))}`);
  t.ok(results.filter((r) => r.status === 200).length >= n - 24, `most requests still succeeded (${results.filter((r) => r.status === 200).length}/${n})`);
  // Each request counted once, success or failure (client mistakes: none here).
  const success = () => metricValue(tb.url, 'inference_request_success_total');
  const failure = () => metricValue(tb.url, 'inference_request_failure_total');
  t.equal((await success()) + (await failure()), n, 'successes + failures = requests');
  t.equal(await success(), n - failed.length, 'successes match the 200s');
  t.equal(await metricValue(tb.url, 'inference_request_failure_total', { reason: 'inference_worker_lost' }), failed.length, 'failures counted with their code as reason');
  t.ok((await metricValue(tb.url, 'inference_worker_failures_total')) >= 1, 'the crash is counted');
  t.equal(await settles(() => metricValue(tb.url, 'inference_workers'), 1), 1, 'the pool is back to its worker');
  t.equal(await metricValue(tb.url, 'inference_pool_queue_size'), 0, 'nothing left queued');
  // A request of the data plane forwarded to the control plane counts as active itself, on its thread.
  t.ok((await metricValue(tb.url, 'http_requests_active')) <= 1, 'no request left active');
  const after = await mapLimit(images, 4, async (img) => (await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image_b64: img.b64 }) })).status);
  t.same([...new Set(after)], [200], 'inference works after the crash');
});

t.test('the worker killed under v2 REST, KServe gRPC and gRPC Infer load: 503 / UNAVAILABLE inference_worker_lost with a retry time', async (t) => {
  // One worker: each round kills it, and a request served afterwards shows its replacement ready for the next.
  const tb = await startGrpcBroker({ INFER_THREADS: '1', INFER_TASKS_PER_WORKER: '1' });
  t.teardown(() => tb.close());
  const infer = tb.broker.infer!;
  const model = infer.models.A.manifest.name;
  const pngs = (await fashionPngs(8)).map((i) => Buffer.from(i.b64, 'base64'));
  const port = tb.broker.grpcPort;
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(V2_PROTO, { keepCase: true, longs: Number, defaults: true, oneofs: true })) as any;
  const kserve = new pkg.inference.GRPCInferenceService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const c = clients(port);
  t.teardown(() => {
    kserve.close();
    c.close();
  });

  /** 60 requests, 12 at a time, with the worker killed under them; then inference serves again. */
  const round = async <R>(name: string, send: (i: number) => Promise<R>): Promise<R[]> => {
    const kill = killWorkersUnderLoad(infer.currentPool);
    const results = await mapLimit(range(60), 12, send);
    t.ok(kill.fired(), `${name}: the worker was killed under load`);
    await kill.done;
    const served = await settles(async () => (await unary(c.inference, 'Infer', { image: pngs[0] })).error?.code ?? 0, 0, 30_000);
    t.equal(served, 0, `${name}: served again`);
    return results;
  };

  // v2 REST (binary tensors): the spec's error body, with the broker's code and request id.
  const v2 = new V2Client(tb.url, 'binary');
  const rest = await round('v2 REST', async (i) => {
    const r = await v2.infer(model, { inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: [pngs[i % pngs.length]!] }], headers: { 'x-request-id': `v2-${i}` } });
    return { status: r.status, code: r.json?.code as string | undefined, error: r.error, requestId: r.json?.request_id as string | undefined, sentId: `v2-${i}`, retryAfter: r.headers.get('retry-after') };
  });
  const restFailed = rest.filter((r) => r.status !== 200);
  t.ok(restFailed.length >= 1, 'v2 REST: the batch in the worker failed');
  t.same(restFailed.filter((r) => !(r.status === 503 && r.code === 'inference_worker_lost' && Number(r.retryAfter) >= 1 && r.requestId === r.sentId && /worker .* died/.test(r.error ?? ''))), [], `v2 REST: each failure is 503 inference_worker_lost with Retry-After: ${JSON.stringify(restFailed.slice(0, 2))}`);

  // gRPC: UNAVAILABLE, the broker's code in the trailers and RetryInfo (and the request id, as trace-id, on the broker's own service).
  const unavailable = (e: grpc.ServiceError, requestId?: string): boolean => {
    const d = statusDetailsOf(e.metadata);
    const traced = requestId === undefined || e.metadata.get('trace-id')[0] === requestId;
    return e.code === grpc.status.UNAVAILABLE && e.metadata.get('x-broker-error-code')[0] === 'inference_worker_lost' && d?.reason === 'inference_worker_lost' && (d.retryDelayS ?? 0) >= 1 && traced && /worker .* died/.test(e.details);
  };
  const described = (e: grpc.ServiceError) => ({ code: e.code, details: e.details, trailers: e.metadata.getMap() });
  const kserveCalls = await round('KServe ModelInfer', async (i) => (await unary(kserve, 'ModelInfer', { model_name: model, inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }], raw_input_contents: [lengthPrefixed([pngs[i % pngs.length]!])] })).error);
  const kserveFailed = kserveCalls.filter((e): e is grpc.ServiceError => e !== null);
  t.ok(kserveFailed.length >= 1, 'KServe ModelInfer: the batch in the worker failed');
  t.same(kserveFailed.filter((e) => !unavailable(e)).map(described), [], 'KServe ModelInfer: each failure is UNAVAILABLE inference_worker_lost with RetryInfo');
  const inferCalls = await round('Infer', async (i) => ({ sentId: `g-${i}`, error: (await unary(c.inference, 'Infer', { image: pngs[i % pngs.length] }, md({ 'x-request-id': `g-${i}` }))).error }));
  const inferFailed = inferCalls.filter((r) => r.error !== null);
  t.ok(inferFailed.length >= 1, 'Infer: the batch in the worker failed');
  t.same(inferFailed.filter((r) => !unavailable(r.error!, r.sentId)).map((r) => described(r.error!)), [], 'Infer: each failure is UNAVAILABLE inference_worker_lost with RetryInfo and its trace-id');
  t.equal(await metricValue(tb.url, 'inference_workers'), 1, 'the pool is back to its worker');
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
