// The tracer's parts alone: W3C traceparent parsing, OTLP time encoding, the sampler, the
// exporter's bounded queue and failure counting, and the OTEL_* settings.
import t from 'tap';
import { createServer } from 'node:http';
import { formatTraceparent, parseTraceparent, validTracestate } from '../../src/obs/trace/context.ts';
import { encodeTraces, otlpObject, unixNanos } from '../../src/obs/trace/otlp.ts';
import { BatchExporter } from '../../src/obs/trace/exporter.ts';
import { Tracer, TRACING_OFF, sampledAtRatio } from '../../src/obs/trace/tracer.ts';
import { SpanKind, type SpanData } from '../../src/obs/trace/span.ts';
import { loadConfig, ConfigError } from '../../src/config/env.ts';
import { startOtlpReceiver } from '../helpers/otlp.ts';
import { hostOf } from '../../src/obs/trace/http.ts';

const TID = '4bf92f3577b34da6a3ce929d0e0e4736';
const SID = '00f067aa0ba902b7';

t.test('traceparent: the spec examples parse; malformed ones start a new trace', async (t) => {
  t.same(parseTraceparent(`00-${TID}-${SID}-01`), { traceId: TID, spanId: SID, sampled: true });
  t.same(parseTraceparent(`00-${TID}-${SID}-00`), { traceId: TID, spanId: SID, sampled: false });
  t.same(parseTraceparent(` 00-${TID}-${SID}-09 `), { traceId: TID, spanId: SID, sampled: true }, 'other flag bits ignored, spaces trimmed');
  t.same(parseTraceparent(`01-${TID}-${SID}-01-future`), { traceId: TID, spanId: SID, sampled: true }, 'a later version with more fields');
  for (const bad of [
    undefined,
    '',
    `00-${TID}-${SID}-01-extra`, // version 00 has exactly four fields
    `ff-${TID}-${SID}-01`,
    `00-${TID.toUpperCase()}-${SID}-01`,
    `00-${'0'.repeat(32)}-${SID}-01`,
    `00-${TID}-${'0'.repeat(16)}-01`,
    `00-${TID.slice(1)}-${SID}-01`,
    `00_${TID}_${SID}_01`,
    `00-${TID}-${SID}-0g`,
    `01-${TID}-${SID}-01x`,
  ]) {
    t.equal(parseTraceparent(bad), undefined, String(bad));
  }
  t.equal(formatTraceparent({ traceId: TID, spanId: SID }), `00-${TID}-${SID}-01`);
});

t.test('tracestate: printable ASCII goes on, truncated past 512 characters as W3C says; a character a header cannot carry drops it', async (t) => {
  t.equal(validTracestate('rojo=00f067aa0ba902b7,congo=t61rcWkgMzE'), 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE');
  t.equal(validTracestate('rojo=1 ,\tcongo=2'), 'rojo=1 ,\tcongo=2', 'tabs and spaces around the commas');
  t.equal(validTracestate(`a=${'x'.repeat(510)}`)?.length, 512);
  t.equal(validTracestate(undefined), undefined);
  for (const bad of ['a=b\x7f', 'a=\u00e9', 'a=b\nc']) t.equal(validTracestate(bad), undefined, JSON.stringify(bad));
  // Members of more than 128 characters go first, then from the end.
  const m = (k: string, n: number) => `${k}=${'v'.repeat(n - k.length - 1)}`;
  const long = [m('a', 100), m('big', 200), m('b', 100), m('c', 100), m('d', 100), m('e', 100), m('f', 100)].join(',');
  t.equal(validTracestate(long), [m('a', 100), m('b', 100), m('c', 100), m('d', 100), m('e', 100)].join(','), 'the 200-character member, then the last');
  t.equal(validTracestate(m('z', 600)), undefined, 'nothing left to keep');
});

t.test('hostOf: the Host header as server.address and server.port', async (t) => {
  t.same(hostOf('api.example.com:8080'), { address: 'api.example.com', port: 8080 });
  t.same(hostOf('api.example.com'), { address: 'api.example.com' });
  t.same(hostOf('[::1]:9000'), { address: '::1', port: 9000 });
  t.same(hostOf('[::1]'), { address: '::1' });
  for (const bad of [undefined, '', ':80', 'a:b:c', 'host:123456']) t.equal(hostOf(bad), undefined, `${bad}: none`);
});

t.test('OTLP times: epoch ms floats as exact nanosecond strings', async (t) => {
  t.equal(unixNanos(1_700_000_000_000), '1700000000000000000');
  t.equal(unixNanos(1_700_000_000_000.5), '1700000000000500000');
  t.equal(unixNanos(1_700_000_000_123.25), '1700000000123250000');
  t.equal(unixNanos(12.000_25), '12000250', 'sub-microsecond where the double holds it');
  t.equal(unixNanos(1_700_000_000_000.999_999_9), '1700000000001000000', 'rounding up carries into the milliseconds');
});

t.test('the hand-written OTLP encoding is the JSON of the reference objects, escapes included', async (t) => {
  const spans: SpanData[] = [
    { traceId: TID, spanId: SID, parentSpanId: undefined, name: 'POST /v1/"odd"\\route\n', kind: 2, startMs: 1_700_000_000_000.25, endMs: 1_700_000_000_001.5, attributes: { s: 'ünï\u2028"q"', i: 42, neg: -7, d: 0.5, b: false, nan: NaN, inf: Infinity, big: 2 ** 60 }, status: 2, statusMessage: 'bad "thing"' },
    { traceId: TID, spanId: '1111111111111111', parentSpanId: SID, name: 'child', kind: 3, startMs: 1, endMs: 2, attributes: {}, status: 0, statusMessage: undefined },
  ];
  const resource = { 'service.name': 'svc "x"', 'broker.thread': 'main' };
  const text = encodeTraces(resource, { name: 'edge-broker', version: '0.1.0' }, spans);
  t.same(JSON.parse(text), JSON.parse(JSON.stringify(otlpObject(resource, { name: 'edge-broker', version: '0.1.0' }, spans))));
  t.equal(text, JSON.stringify(otlpObject(resource, { name: 'edge-broker', version: '0.1.0' }, spans)), 'byte for byte');
  t.equal(encodeTraces({}, { name: 'x', version: '0' }, []), JSON.stringify(otlpObject({}, { name: 'x', version: '0' }, [])));
});

t.test('sampling: parent-based, ratio for new traces', async (t) => {
  const none = new Tracer({ serviceName: 's', url: 'http://127.0.0.1:9/v1/traces', sampleRatio: 0, thread: 'main' });
  t.teardown(() => none.shutdown(0));
  t.equal(none.startServer('GET', undefined, undefined, Date.now()), undefined, 'ratio 0: no new trace is recorded');
  const child = none.startServer('GET', `00-${TID}-${SID}-01`, 'a=1', Date.now());
  t.ok(child, 'a sampled parent is followed whatever the ratio');
  t.equal(child!.traceId, TID);
  t.equal(child!.parentSpanId, SID);
  t.equal(child!.kind, SpanKind.SERVER);
  t.equal(child!.tracestate, 'a=1');
  t.equal(none.startServer('GET', `00-${TID}-${SID}-00`, undefined, Date.now()), undefined, 'an unsampled parent is followed too');
  const grand = child!.child('x');
  t.equal(grand.traceId, TID);
  t.equal(grand.parentSpanId, child!.spanId);
  t.equal(grand.traceparent, `00-${TID}-${grand.spanId}-01`);
  // A sampler that is not parent-based: the ratio decides, in the caller's trace when recorded.
  const off = new Tracer({ serviceName: 's', url: 'http://127.0.0.1:9/v1/traces', sampleRatio: 0, parentBased: false, thread: 'main' });
  t.teardown(() => off.shutdown(0));
  t.equal(off.startServer('GET', `00-${TID}-${SID}-01`, undefined, Date.now()), undefined, 'always_off: not even a sampled parent is recorded');
  const on = new Tracer({ serviceName: 's', url: 'http://127.0.0.1:9/v1/traces', sampleRatio: 1, parentBased: false, thread: 'main' });
  t.teardown(() => on.shutdown(0));
  const kept = on.startServer('GET', `00-${TID}-${SID}-00`, undefined, Date.now());
  t.equal(kept?.traceId, TID, "always_on: an unsampled parent's request is recorded, in its trace");
  t.equal(kept?.parentSpanId, SID);
  t.equal(TRACING_OFF.enabled, false);
  t.equal(TRACING_OFF.startServer('GET', `00-${TID}-${SID}-01`, undefined, 0), undefined, 'off: nothing, even for a sampled parent');
});

t.test('traceidratio decides from the trace id: every request of a trace alike, about the ratio of traces', async (t) => {
  const half = new Tracer({ serviceName: 's', url: 'http://127.0.0.1:9/v1/traces', sampleRatio: 0.5, parentBased: false, thread: 'main' });
  t.teardown(() => half.shutdown(0));
  const low = `${'4bf92f3577b34da6'}${'0'.repeat(16)}`;
  const high = `${'4bf92f3577b34da6'}${'f'.repeat(16)}`;
  for (const [id, kept] of [[low, true], [high, false]] as const) {
    const seen = new Set(Array.from({ length: 20 }, () => half.startServer('GET', `00-${id}-${SID}-01`, undefined, Date.now()) !== undefined));
    t.same([...seen], [kept], `20 requests of trace ${id.slice(-4)}: ${kept ? 'all' : 'none'} recorded`);
  }
  let recorded = 0;
  for (let i = 0; i < 4000; i++) if (half.startServer('GET', undefined, undefined, Date.now()) !== undefined) recorded++;
  t.ok(recorded > 1700 && recorded < 2300, `new traces at about the ratio (${recorded} of 4000)`);
  t.equal(sampledAtRatio(low, 0.001), true);
  t.equal(sampledAtRatio(high, 0.999), false);
});

const span = (i: number): SpanData => ({ traceId: TID, spanId: SID, parentSpanId: undefined, name: `s${i}`, kind: 1, startMs: 1, endMs: 2, attributes: { i }, status: 0, statusMessage: undefined });

t.test('exporter: a full queue drops and counts; a failing endpoint drops its batch and counts', async (t) => {
  // An endpoint that never answers: the first batch stays in flight, the queue fills.
  const hung = createServer(() => undefined);
  await new Promise<void>((r) => hung.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    hung.closeAllConnections();
    hung.close();
  });
  const outcomes: Record<string, number> = {};
  const errors: string[] = [];
  const e = new BatchExporter({
    url: `http://127.0.0.1:${(hung.address() as { port: number }).port}/v1/traces`,
    resource: {},
    scope: { name: 'x', version: '0' },
    maxQueue: 3,
    maxBatch: 2,
    intervalMs: 60_000,
    timeoutMs: 300,
    onOutcome: (o, n) => (outcomes[o] = (outcomes[o] ?? 0) + n),
    onError: (err) => errors.push(err.message),
  });
  for (let i = 0; i < 5; i++) e.push(span(i));
  t.equal(outcomes.dropped_queue_full, 2, 'past maxQueue, spans are dropped and counted');
  await e.flush();
  t.equal(outcomes.dropped_export_failed, 3, 'batches the endpoint did not take in time are dropped and counted');
  t.equal(errors.length, 1, 'one log line for the failures, not one per batch');
  await e.shutdown(100);
  e.push(span(9));
  t.equal(outcomes.dropped_queue_full, 3, 'after shutdown nothing is taken');
});

t.test('exporter: batches of maxBatch, everything sent by shutdown', async (t) => {
  const otlp = await startOtlpReceiver();
  t.teardown(() => otlp.close());
  const e = new BatchExporter({ url: `${otlp.url}/v1/traces`, resource: { 'service.name': 'unit' }, scope: { name: 'x', version: '0' }, maxQueue: 100, maxBatch: 4, intervalMs: 60_000, timeoutMs: 2000 });
  for (let i = 0; i < 10; i++) e.push(span(i));
  await e.shutdown(2000);
  t.equal(otlp.spans.length, 10);
  t.same(otlp.requests.map((r) => (r as { resourceSpans: { scopeSpans: { spans: unknown[] }[] }[] }).resourceSpans[0]!.scopeSpans[0]!.spans.length), [4, 4, 2]);
  t.same(e.counts, { exported: 10, dropped_queue_full: 0, dropped_export_failed: 0 });
  t.equal(otlp.spans[3]!.attributes.i, 3);
  t.equal(otlp.spans[0]!.resource['service.name'], 'unit');
});

t.test('exporter: the collector\'s headers; Retry-After on 429 pauses the exports; partialSuccess rejections count as dropped', async (t) => {
  const otlp = await startOtlpReceiver();
  t.teardown(() => otlp.close());
  const outcomes: Record<string, number> = {};
  const errors: string[] = [];
  const e = new BatchExporter({
    url: `${otlp.url}/v1/traces`,
    resource: {},
    scope: { name: 'x', version: '0' },
    headers: { authorization: 'Bearer s3cr3t' },
    maxQueue: 100,
    maxBatch: 2,
    intervalMs: 60_000,
    timeoutMs: 2000,
    onOutcome: (o, n) => (outcomes[o] = (outcomes[o] ?? 0) + n),
    onError: (err) => errors.push(err.message),
  });
  t.teardown(() => e.shutdown(0));
  otlp.reply = { status: 200, body: '{"partialSuccess":{"rejectedSpans":"1","errorMessage":"bad span"}}' };
  e.push(span(0));
  e.push(span(1));
  await e.flush();
  t.equal(otlp.headers[0]?.authorization, 'Bearer s3cr3t', 'the credentials go with the POST');
  t.same(outcomes, { exported: 1, dropped_export_failed: 1 }, 'a rejected span is no exported one');
  t.match(errors, [/rejected 1 of 2 spans/]);
  otlp.reply = { status: 429, headers: { 'retry-after': '30' } };
  e.push(span(2));
  e.push(span(3));
  await e.flush();
  t.equal(otlp.requests.length, 2);
  t.match(errors, [/rejected 1 of 2 spans/, /answered 429/], 'a failure after a rejection is said too: each kind once a minute');
  otlp.reply = { status: 200 };
  for (let i = 4; i < 8; i++) e.push(span(i));
  await e.flush();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(otlp.requests.length, 2, 'nothing sent while the collector asked to wait');
  t.equal(e.queued, 4, 'the spans wait for it');
  await e.shutdown(2000);
  t.equal(otlp.requests.length, 4, 'shutdown offers them once more');
  t.equal(outcomes.exported, 5);
});

t.test('settings: OTEL_* variables', async (t) => {
  const d = loadConfig({}).otel;
  t.same(d, { enabled: false, tracesUrl: 'http://localhost:4318/v1/traces', serviceName: 'edge-broker', sampleRatio: 1, parentBased: true, headers: {}, resourceAttributes: {}, notes: [], batch: { maxQueue: 2048, maxBatch: 512, intervalMs: 1000, timeoutMs: 5000 } });
  const c = loadConfig({ OTEL_ENABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/', OTEL_SERVICE_NAME: 'edge-1', OTEL_TRACES_SAMPLER_ARG: '0.25' }).otel;
  t.same(c, { enabled: true, tracesUrl: 'http://collector:4318/v1/traces', serviceName: 'edge-1', sampleRatio: 0.25, parentBased: true, headers: {}, resourceAttributes: {}, notes: [], batch: { maxQueue: 2048, maxBatch: 512, intervalMs: 1000, timeoutMs: 5000 } });
  // The collector's credentials: the spec's key=value list (percent-decoded), and user:password in the URL as Basic auth.
  const auth = loadConfig({ OTEL_EXPORTER_OTLP_HEADERS: 'Authorization=Bearer%20s3cr3t, x-scope-orgid=team-a', OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-scope-orgid=team-b' }).otel;
  t.same(auth.headers, { authorization: 'Bearer s3cr3t', 'x-scope-orgid': 'team-b' }, 'the traces list wins over the general one');
  const basic = loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://user:pa%3Ass@collector:4318' }).otel;
  t.equal(basic.tracesUrl, 'http://collector:4318/v1/traces', 'the credentials leave the URL');
  t.same(basic.headers, { authorization: `Basic ${Buffer.from('user:pa:ss').toString('base64')}` });
  const thrown = (env: Record<string, string>): Error | undefined => {
    try {
      loadConfig(env);
    } catch (e) {
      return e as Error;
    }
    return undefined;
  };
  const bad = thrown({ OTEL_ENABLED: 'true', OTEL_EXPORTER_OTLP_HEADERS: 'authorization=Bearer ok,s3cr3t-without-a-key' });
  t.ok(bad instanceof ConfigError);
  t.match(bad?.message, /OTEL_EXPORTER_OTLP_HEADERS: entry 2 must be key=value/);
  t.notMatch(bad?.message, /s3cr3t/, 'a bad entry is named, never quoted');
  const badUrl = thrown({ OTEL_ENABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://user:pa55word@127.0.0.1:99999' });
  t.ok(badUrl instanceof ConfigError);
  t.notMatch(badUrl?.message, /pa55word/, 'a URL that does not parse is quoted without its password');
  // Samplers: the spec's six names.
  t.same(['always_off', 'always_on', 'traceidratio', 'parentbased_always_off', 'parentbased_always_on', 'parentbased_traceidratio'].map((s) => {
    const o = loadConfig({ OTEL_TRACES_SAMPLER: s, OTEL_TRACES_SAMPLER_ARG: '0.5' }).otel;
    return [o.sampleRatio, o.parentBased];
  }), [[0, false], [1, false], [0.5, false], [0, true], [1, true], [0.5, true]]);
  t.throws(() => loadConfig({ OTEL_ENABLED: 'true', OTEL_TRACES_SAMPLER: 'jaeger_remote' }), ConfigError);
  // Traces off: standard variables set for the whole pod that the broker cannot read do not stop it.
  t.equal(loadConfig({ OTEL_TRACES_SAMPLER: 'jaeger_remote', OTEL_RESOURCE_ATTRIBUTES: 'no-equals', OTEL_EXPORTER_OTLP_HEADERS: '=x' }).otel.enabled, false);
  t.same(loadConfig({ OTEL_RESOURCE_ATTRIBUTES: 'k8s.pod.name=broker-0,deployment.environment=prod%20eu' }).otel.resourceAttributes, { 'k8s.pod.name': 'broker-0', 'deployment.environment': 'prod eu' });
  t.equal(loadConfig({ OTEL_ENABLED: 'true', OTEL_SDK_DISABLED: 'true' }).otel.enabled, false, 'OTEL_SDK_DISABLED turns it off');
  t.match(loadConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }).otel.notes, [/OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not spoken/], 'a protocol not spoken is said at start-up');
  t.same(loadConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }).otel.notes, []);
  t.equal(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:1', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://b/custom/path' }).otel.tracesUrl, 'https://b/custom/path', 'the traces endpoint is a full URL');
  t.equal(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/otlp/?tenant=1' }).otel.tracesUrl, 'http://c:4318/otlp/v1/traces?tenant=1', 'the signal path goes before a query string');
  t.throws(() => loadConfig({ OTEL_ENABLED: 'true', OTEL_TRACES_SAMPLER_ARG: '1.5' }), ConfigError);
  t.throws(() => loadConfig({ OTEL_ENABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'grpc://x:4317' }), ConfigError);
  t.throws(() => loadConfig({ OTEL_ENABLED: 'maybe' }), ConfigError);
});
