// OpenTelemetry traces end to end: a broker with OTEL_ENABLED=true exports to a real
// OTLP/HTTP receiver run here (test/helpers/otlp.ts), in front of mock LLM upstreams that
// record the headers they get. Checked: span names, parent/child links, attributes, an
// incoming traceparent's trace id kept, the traceparent sent upstream naming the attempt
// span, inference spans under the request span across the worker boundary; once with
// data-plane threads (FRONT_THREADS=2) and once on the main thread alone (FRONT_THREADS=0).
import t from 'tap';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { logLine, metricValue, postJson } from '../helpers/broker.ts';
import { fashionPngs } from '../helpers/images.ts';
import { startOtlpReceiver, type ReceivedSpan } from '../helpers/otlp.ts';
import { newSpanId, newTraceId } from '../../src/obs/trace/ids.ts';

const SERVER = 2;
const CLIENT = 3;
const messages = [{ role: 'user', content: 'Say something.' }];
const images = await fashionPngs(2);

const byTrace = (spans: ReceivedSpan[], traceId: string): ReceivedSpan[] => spans.filter((s) => s.traceId === traceId);
const named = (spans: ReceivedSpan[], name: string): ReceivedSpan[] => spans.filter((s) => s.name === name);
const one = (spans: ReceivedSpan[], name: string): ReceivedSpan => {
  const found = named(spans, name);
  if (found.length !== 1) throw new Error(`expected one ${name}, got ${found.length}: ${spans.map((s) => s.name).join(', ')}`);
  return found[0]!;
};
const ns = (s: string): bigint => BigInt(s);

for (const FRONT_THREADS of ['2', '0']) {
  t.test(`FRONT_THREADS=${FRONT_THREADS}`, async (t) => {
    const otlp = await startOtlpReceiver();
    t.teardown(() => otlp.close());
    const ok = await startMock(t);
    const broken = await startMock(t, { fail: 500 });
    const cut = await startMock(t, { fail: 'reset', failAfter: 2 });
    const dep = (id: string, url: string, extra: Record<string, unknown> = {}) => ({ id, provider: 'openai', url, model: `${id}-upstream`, ...extra });
    const tb = await startFleetBroker(
      t,
      {
        cache: { mode: 'deterministic' },
        modelGroups: { chat: { deployments: [dep('ok-1', ok.url)] }, retry: { deployments: [dep('broken-1', broken.url, { weight: 1000 }), dep('ok-2', ok.url)] }, dead: { deployments: [dep('dead-1', broken.url)] }, cut: { deployments: [dep('cut-1', cut.url)] } },
        apiKeys: { 'sk-one-a-minute': { rpm: 1 } },
      },
      { FRONT_THREADS, INFER_THREADS: '1', OTEL_ENABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: `${otlp.url}/`, OTEL_SERVICE_NAME: 'eb-otel-test', BROKER_FF_QUOTA_ENFORCEMENT: 'true' },
    );
    t.equal(tb.broker.planes?.count ?? 0, Number(FRONT_THREADS));

    t.test('a streamed chat completion: request, admission, queue wait, upstream attempt; the incoming trace id kept', async (t) => {
      const traceId = newTraceId();
      const callerSpan = newSpanId();
      const res = await fetch(`${tb.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', traceparent: `00-${traceId}-${callerSpan}-01`, tracestate: 'vendor=abc' },
        body: JSON.stringify({ model: 'chat', messages, stream: true }),
      });
      t.equal(res.status, 200);
      t.match(await res.text(), /\[DONE\]/);
      const requestId = res.headers.get('trace-id')!;

      const spans = byTrace(await otlp.waitFor((s) => byTrace(s, traceId).length >= 4), traceId);
      const server = one(spans, 'POST /v1/chat/completions');
      t.equal(server.kind, SERVER);
      t.equal(server.parentSpanId, callerSpan, "the request span's parent is the caller's span");
      t.match(server.attributes, { 'http.request.method': 'POST', 'http.route': '/v1/chat/completions', 'http.response.status_code': 200, 'url.path': '/v1/chat/completions', 'url.scheme': 'http', 'broker.cache': 'off', 'server.address': '127.0.0.1', 'server.port': Number(new URL(tb.url).port) });
      t.equal(server.status.code ?? 0, 0, 'a whole stream: status unset');
      t.equal(server.attributes['broker.request_id'], requestId, 'the broker request id (Trace-Id) is on the span');
      t.equal(server.resource['service.name'], 'eb-otel-test');
      t.equal(server.resource['broker.thread'], FRONT_THREADS === '0' ? 'main' : server.resource['broker.thread']);
      if (FRONT_THREADS !== '0') t.match(server.resource['broker.thread'], /^plane-\d$/, 'exported by the data-plane thread that served it');

      const admission = one(spans, 'llm.admission');
      t.equal(admission.parentSpanId, server.spanId);
      t.match(admission.attributes, { 'llm.model_group': 'chat', 'llm.priority': 5 });
      const wait = one(spans, 'llm.queue_wait');
      t.equal(wait.parentSpanId, server.spanId);
      t.match(wait.attributes, { 'llm.deployment': 'ok-1', 'llm.retry_index': 0 });
      const attempt = one(spans, 'llm.upstream');
      t.equal(attempt.kind, CLIENT);
      t.equal(attempt.parentSpanId, server.spanId);
      t.match(attempt.attributes, {
        'llm.deployment': 'ok-1',
        'server.address': '127.0.0.1',
        'server.port': ok.port,
        'http.response.status_code': 200,
        'llm.retry_index': 0,
        'llm.stream': true,
        'gen_ai.request.model': 'ok-1-upstream',
        'gen_ai.operation.name': 'chat',
        'gen_ai.provider.name': 'openai',
        'gen_ai.usage.output_tokens': 4,
      });
      t.type(attempt.attributes['llm.ttft_ms'], 'number', 'TTFT recorded');
      t.notOk(attempt.status.code === 2, 'the attempt succeeded');

      // The upstream got a traceparent on the same trace, naming the attempt span as its parent.
      t.equal(ok.stats.lastHeaders?.traceparent, `00-${traceId}-${attempt.spanId}-01`);
      t.equal(ok.stats.lastHeaders?.tracestate, 'vendor=abc', 'tracestate passed on unchanged');

      // Children sit inside the request span; times are nanosecond strings.
      for (const s of [server, admission, wait, attempt]) {
        t.match(s.startTimeUnixNano, /^\d{19}$/);
        t.ok(ns(s.endTimeUnixNano) >= ns(s.startTimeUnixNano), `${s.name} ends after it starts`);
      }
      t.ok(ns(attempt.startTimeUnixNano) >= ns(server.startTimeUnixNano) && ns(attempt.endTimeUnixNano) <= ns(server.endTimeUnixNano), 'the attempt is within the request');

      const line = await logLine(tb, (l) => l.msg === 'request' && l.trace_id === requestId);
      t.equal(line?.otel_trace_id, traceId, 'the access log line names the trace');
      t.equal(line?.otel_span_id, server.spanId);
    });

    t.test('a retry: one attempt span per upstream tried, with its retry index and status', async (t) => {
      const traceId = newTraceId();
      const res = await postJson(`${tb.url}/v1/chat/completions`, { model: 'retry', messages }, { traceparent: `00-${traceId}-${newSpanId()}-01` });
      t.equal(res.status, 200);
      const spans = byTrace(await otlp.waitFor((s) => named(byTrace(s, traceId), 'llm.upstream').length >= 2 && named(byTrace(s, traceId), 'POST /v1/chat/completions').length === 1), traceId);
      const attempts = named(spans, 'llm.upstream').sort((a, b) => Number(a.attributes['llm.retry_index']) - Number(b.attributes['llm.retry_index']));
      t.match(attempts[0]!.attributes, { 'llm.deployment': 'broken-1', 'llm.retry_index': 0, 'http.response.status_code': 500, 'error.type': '500' });
      t.equal(attempts[0]!.status.code, 2, 'the failed attempt is an error');
      t.match(attempts[1]!.attributes, { 'llm.deployment': 'ok-2', 'llm.retry_index': 1, 'http.response.status_code': 200, 'llm.stream': false });
      t.equal(named(spans, 'llm.queue_wait').length, 2, 'a lease per attempt');
      t.equal(broken.stats.lastHeaders?.traceparent, `00-${traceId}-${attempts[0]!.spanId}-01`, 'each attempt sends its own span as parent');
      t.equal(ok.stats.lastHeaders?.traceparent, `00-${traceId}-${attempts[1]!.spanId}-01`);

      // Its only deployment failed: the error is the attempt's, not a wait's.
      const deadTrace = newTraceId();
      t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'dead', messages }, { traceparent: `00-${deadTrace}-${newSpanId()}-01` })).status, 502);
      const dead = byTrace(await otlp.waitFor((s) => named(byTrace(s, deadTrace), 'POST /v1/chat/completions').length === 1), deadTrace);
      t.equal(one(dead, 'llm.upstream').status.code, 2, 'the failed attempt is an error');
      t.same(named(dead, 'llm.queue_wait').map((w) => w.status.code ?? 0), [0, 0], 'neither wait is (the second found no deployment left)');
    });

    t.test('a stream cut after its 200: the request span is an error too; a cache hit and a miss say so; an unmatched path is named by its method', async (t) => {
      const cutTrace = newTraceId();
      const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', traceparent: `00-${cutTrace}-${newSpanId()}-01` }, body: JSON.stringify({ model: 'cut', messages, stream: true }) });
      t.equal(res.status, 200);
      await res.text();
      const spans = byTrace(await otlp.waitFor((s) => named(byTrace(s, cutTrace), 'POST /v1/chat/completions').length === 1 && named(byTrace(s, cutTrace), 'llm.upstream').length === 1), cutTrace);
      const server = one(spans, 'POST /v1/chat/completions');
      t.match(server.attributes, { 'http.response.status_code': 200, 'error.type': 'upstream_error' });
      t.equal(server.status.code, 2, 'cut after the status line: an error, as the HTTP conventions say');
      t.notOk('gen_ai.usage.input_tokens' in one(spans, 'llm.upstream').attributes, 'no usage from the upstream: the input count is left out, not 0');

      const ask = async (traceId: string) => {
        const r = await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages: [{ role: 'user', content: `cache me ${cutTrace}` }], temperature: 0 }, { traceparent: `00-${traceId}-${newSpanId()}-01` });
        t.equal(r.status, 200);
        const all = await otlp.waitFor((s) => named(byTrace(s, traceId), 'POST /v1/chat/completions').length === 1);
        return one(byTrace(all, traceId), 'POST /v1/chat/completions').attributes['broker.cache'];
      };
      t.equal(await ask(newTraceId()), 'miss');
      t.equal(await ask(newTraceId()), 'hit');

      const lost = newTraceId();
      t.equal((await fetch(`${tb.url}/no/such/path`, { headers: { traceparent: `00-${lost}-${newSpanId()}-01` } })).status, 404);
      const unmatched = byTrace(await otlp.waitFor((s) => byTrace(s, lost).length === 1), lost)[0]!;
      t.equal(unmatched.name, 'GET');
      t.notOk('http.route' in unmatched.attributes, 'no route');
    });

    t.test("the key's quota refusing a request: an llm.quota span with quota_exceeded, under the request span", async (t) => {
      const key = { authorization: 'Bearer sk-one-a-minute' };
      t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, key)).status, 200);
      const traceId = newTraceId();
      const res = await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, { ...key, traceparent: `00-${traceId}-${newSpanId()}-01` });
      t.equal(res.status, 429);
      const spans = byTrace(await otlp.waitFor((s) => named(byTrace(s, traceId), 'POST /v1/chat/completions').length === 1 && named(byTrace(s, traceId), 'llm.quota').length === 1), traceId);
      const quota = one(spans, 'llm.quota');
      t.equal(quota.attributes['error.type'], 'quota_exceeded');
      t.equal(quota.status.code, 2);
      t.equal(quota.parentSpanId, one(spans, 'POST /v1/chat/completions').spanId);
    });

    t.test('no traceparent (or an invalid one): a new trace; an unsampled one: nothing recorded, nothing sent on', async (t) => {
      const unsampled = newTraceId();
      const callerSpan = newSpanId();
      const r0 = await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, { traceparent: `00-${unsampled}-${callerSpan}-00`, tracestate: 'vendor=x' });
      t.equal(r0.status, 200);
      t.equal(ok.stats.lastHeaders?.traceparent, `00-${unsampled}-${callerSpan}-00`, 'parent-based: a caller that does not sample is followed, and its context passed on unchanged');
      t.equal(ok.stats.lastHeaders?.tracestate, 'vendor=x');

      const fresh = await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, { 'x-request-id': 'otel-fresh-1' });
      t.equal(fresh.status, 200);
      const sent = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(String(ok.stats.lastHeaders?.traceparent));
      t.ok(sent, 'a new sampled trace goes upstream');
      const invalid = await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, { 'x-request-id': 'otel-invalid-1', traceparent: `00-${'0'.repeat(32)}-${newSpanId()}-01` });
      t.equal(invalid.status, 200);

      const spans = await otlp.waitFor((s) => s.some((x) => x.attributes['broker.request_id'] === 'otel-fresh-1') && s.some((x) => x.attributes['broker.request_id'] === 'otel-invalid-1'));
      for (const id of ['otel-fresh-1', 'otel-invalid-1']) {
        const server = spans.find((x) => x.attributes['broker.request_id'] === id)!;
        t.equal(server.parentSpanId ?? '', '', `${id}: a root span`);
        t.match(server.traceId, /^[0-9a-f]{32}$/);
        t.not(server.traceId, '0'.repeat(32));
      }
      const freshServer = spans.find((x) => x.attributes['broker.request_id'] === 'otel-fresh-1')!;
      t.equal(sent?.[1], freshServer.traceId, 'the upstream is on the new trace');
      t.equal(byTrace(spans, unsampled).length, 0, 'no span of the unsampled trace');
    });

    t.test('/v1/infer: queue, decode and compute spans under the request span, across the worker boundary', async (t) => {
      const traceId = newTraceId();
      const res = await postJson(`${tb.url}/v1/infer`, { image_b64: images[0]!.b64, top_k: 1 }, { traceparent: `00-${traceId}-${newSpanId()}-01` });
      t.equal(res.status, 200);
      const spans = byTrace(await otlp.waitFor((s) => byTrace(s, traceId).length >= 4), traceId);
      const server = one(spans, 'POST /v1/infer');
      const model = tb.broker.infer!.models.A.manifest;
      for (const name of ['infer.queue', 'infer.decode', 'infer.compute']) {
        const s = one(spans, name);
        t.equal(s.parentSpanId, server.spanId, `${name} is a child of the request span`);
        t.match(s.attributes, { 'infer.model': model.name, 'infer.model_version': model.version, 'infer.batch_size': 1 }, name);
        t.ok(ns(s.endTimeUnixNano) >= ns(s.startTimeUnixNano));
      }
      // decode and compute come from the worker's own clock, in order.
      t.ok(ns(one(spans, 'infer.decode').endTimeUnixNano) <= ns(one(spans, 'infer.compute').startTimeUnixNano) + 1n, 'compute follows decode');
      t.equal(one(spans, 'infer.decode').resource['broker.thread'], 'main', 'inference spans are exported by the control plane, which owns the pool');

      // An image that does not decode: its decode span says why, and no compute span follows.
      const badTrace = newTraceId();
      const bad = await postJson(`${tb.url}/v1/infer`, { image_b64: Buffer.from('not an image at all').toString('base64') }, { traceparent: `00-${badTrace}-${newSpanId()}-01` });
      t.equal(bad.status, 415);
      const badSpans = byTrace(await otlp.waitFor((s) => byTrace(s, badTrace).some((x) => x.name === 'infer.decode')), badTrace);
      t.match(one(badSpans, 'infer.decode').attributes, { 'error.type': 'unsupported_image', 'infer.batch_size': one(badSpans, 'infer.queue').attributes['infer.batch_size'], 'infer.batch_computed': 0 }, 'its batch as the queue span counts it; none of it computed');
      t.equal(badSpans.filter((x) => x.name === 'infer.compute').length, 0, 'no compute span for an image the model never saw');
    });

    t.test('the OTLP requests are ExportTraceServiceRequests; spans are counted in /metrics', async (t) => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const body = otlp.requests[0] as any;
      t.ok(Array.isArray(body.resourceSpans));
      const span = body.resourceSpans[0].scopeSpans[0].spans[0];
      t.equal(body.resourceSpans[0].scopeSpans[0].scope.name, 'edge-broker');
      t.type(span.startTimeUnixNano, 'string');
      t.type(span.kind, 'number');
      t.equal(otlp.refused, 0, 'spans were POSTed to /v1/traces as JSON (the trailing slash of the endpoint is dropped)');
      const exported = await metricValue(tb.url, 'otel_spans_total', { outcome: 'exported' });
      t.ok(exported >= 4, `otel_spans_total{outcome="exported"} = ${exported}`);
      t.equal(await metricValue(tb.url, 'otel_spans_total', { outcome: 'dropped_queue_full' }), 0);
    });
  });
}

t.test("OTEL_ENABLED=false: the client's traceparent passed on unchanged (none of the broker's), nothing exported", async (t) => {
  const otlp = await startOtlpReceiver();
  t.teardown(() => otlp.close());
  const ok = await startMock(t);
  const tb = await startFleetBroker(t, { modelGroups: { chat: { deployments: [{ id: 'ok-1', provider: 'openai', url: ok.url, model: 'm' }] } } }, { INFER_ENABLED: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url });
  const incoming = `00-${newTraceId()}-${newSpanId()}-01`;
  const res = await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, { traceparent: incoming });
  t.equal(res.status, 200);
  t.equal(ok.stats.lastHeaders?.traceparent, incoming, 'as a proxy that does not trace passes it on');
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, { traceparent: 'not-a-traceparent' })).status, 200);
  t.equal(ok.stats.lastHeaders?.traceparent, undefined, 'an invalid one is not passed on');
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages })).status, 200);
  t.equal(ok.stats.lastHeaders?.traceparent, undefined, 'none given, none sent');
  await tb.close();
  t.equal(otlp.requests.length, 0, 'nothing reached the receiver, even at shutdown');
});

// A tracestate undici will not write (a DEL byte) failed every attempt before it was sent and
// was counted against the deployment: a few such requests opened its breaker for every tenant.
for (const otel of ['false', 'true']) {
  t.test(`OTEL_ENABLED=${otel}: a tracestate that is not printable ASCII or is past 512 characters is dropped; the deployment is never blamed`, async (t) => {
    const otlp = await startOtlpReceiver();
    t.teardown(() => otlp.close());
    const ok = await startMock(t);
    const tb = await startFleetBroker(t, { fleet: { breaker: { failureThreshold: 2 } }, modelGroups: { chat: { deployments: [{ id: 'ok-1', provider: 'openai', url: ok.url, model: 'm' }] } } }, { INFER_ENABLED: 'false', OTEL_ENABLED: otel, OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url });
    const { connect } = await import('node:net');
    const body = JSON.stringify({ model: 'chat', messages });
    // Raw bytes: fetch and undici refuse to send such a header themselves.
    const raw = (tracestate: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const u = new URL(tb.url);
        const sock = connect(Number(u.port), u.hostname);
        let got = '';
        sock.on('data', (d) => {
          got += d.toString('latin1');
          if (/\r\n0\r\n\r\n$/.test(got) || (/content-length: (\d+)/i.test(got) && got.length >= got.indexOf('\r\n\r\n') + 4 + Number(/content-length: (\d+)/i.exec(got)![1]))) sock.end();
        });
        sock.on('end', () => resolve(got));
        sock.on('error', reject);
        sock.write(Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntraceparent: 00-${newTraceId()}-${newSpanId()}-01\r\ntracestate: ${tracestate}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`, 'latin1'));
      });
    for (const bad of ['a=b\x7f', 'a=b\x7f', 'a=b\x7f', `a=${'x'.repeat(600)}`]) {
      const reply = await raw(bad);
      t.match(reply, /^HTTP\/1\.1 200 /, `${JSON.stringify(bad.slice(0, 8))}: served`);
      t.equal(ok.stats.lastHeaders?.tracestate, undefined, 'not passed on');
      t.ok(ok.stats.lastHeaders?.traceparent, 'the traceparent still is');
    }
    t.equal(await metricValue(tb.url, 'circuit_breaker_state', { server: 'ok-1', model: 'm' }), 0, 'the breaker stayed closed');
    t.match(await raw('vendor=abc'), /^HTTP\/1\.1 200 /);
    t.equal(ok.stats.lastHeaders?.tracestate, 'vendor=abc', 'a valid one still is');
  });
}

t.test('a request the sampler passes over still sends a traceparent upstream, marked not sampled; repeated trace headers as W3C Trace Context says', async (t) => {
  const otlp = await startOtlpReceiver();
  t.teardown(() => otlp.close());
  const ok = await startMock(t);
  const tb = await startFleetBroker(t, { modelGroups: { chat: { deployments: [{ id: 'ok-1', provider: 'openai', url: ok.url, model: 'm' }] } } }, { INFER_ENABLED: 'false', OTEL_ENABLED: 'true', OTEL_TRACES_SAMPLER_ARG: '0', OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url });
  const unsampled = /^00-([0-9a-f]{32})-[0-9a-f]{16}-00$/;
  const sent: string[] = [];
  for (let i = 0; i < 2; i++) {
    t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat', messages }, { tracestate: 'orphan=1' })).status, 200);
    const tp = String(ok.stats.lastHeaders?.traceparent);
    t.match(tp, unsampled, 'a new trace, not sampled: an upstream with a parent-based sampler records nothing either');
    t.equal(ok.stats.lastHeaders?.tracestate, undefined, 'a tracestate without a traceparent is dropped');
    sent.push(unsampled.exec(tp)?.[1] ?? '');
  }
  t.not(sent[0], sent[1], 'one trace per request');
  // Raw headers: fetch would join repeated ones itself.
  const { request } = await import('undici');
  const post = async (headers: string[]) => {
    const r = await request(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: ['content-type', 'application/json', ...headers], body: JSON.stringify({ model: 'chat', messages }) });
    await r.body.text();
    return r.statusCode;
  };
  const caller = `00-${newTraceId()}-${newSpanId()}-00`;
  t.equal(await post(['traceparent', caller, 'tracestate', 'a=1', 'tracestate', 'b=2']), 200);
  t.equal(ok.stats.lastHeaders?.traceparent, caller);
  t.equal(ok.stats.lastHeaders?.tracestate, 'a=1,b=2', 'tracestate on two lines is one list');
  const other = `00-${newTraceId()}-${newSpanId()}-00`;
  t.equal(await post(['traceparent', caller, 'traceparent', other]), 200);
  const tp = String(ok.stats.lastHeaders?.traceparent);
  t.match(tp, unsampled);
  t.ok(tp.slice(3, 35) !== caller.slice(3, 35) && tp.slice(3, 35) !== other.slice(3, 35), 'traceparent twice is invalid: a new trace starts');
  await tb.close();
  t.equal(otlp.spans.length, 0, 'nothing recorded at ratio 0');
});
