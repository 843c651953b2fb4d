import t from 'tap';
import { fileURLToPath } from 'node:url';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../../src/config/env.ts';

/** A bundled model's absolute path: models/ of the tree this test runs in (the repo, or `npm test`'s .test-build/). */
const bundled = (file: string): string => fileURLToPath(new URL(`../../models/${file}`, import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'eb-env-'));
t.teardown(() => rmSync(scratch, { recursive: true, force: true }));
const onnxWithoutManifest = join(scratch, 'vA.onnx');
copyFileSync(bundled('vA.onnx'), onnxWithoutManifest);

t.test('defaults', async (t) => {
  const c = loadConfig({});
  t.equal(c.port, 8080);
  t.equal(c.maxBodyBytes, 8 * 1024 * 1024);
  t.equal(c.modelVaPath, bundled('vA.onnx'), 'the bundled model, by an absolute path: any working directory finds it');
  t.equal(c.modelVbPath, bundled('vB.onnx'));
  t.equal(c.adminToken, undefined);
  t.ok(Object.isFrozen(c));
  t.ok(c.inferThreads * c.inferIntraOpThreads >= 1);
  // Worker threads' young generation is pinned at V8's 16 MiB maximum (main.ts): no shrink-and-regrow under load.
  t.equal(c.threadSemiSpaceMb, 16);
  t.equal(loadConfig({ THREAD_SEMI_SPACE_MB: '0' }).threadSemiSpaceMb, 0);
  // One caller's share of stored Responses: a quarter of the store unless told.
  t.equal(c.responsesStoreOwnerMb, 0, 'off by default: one owner (a single-tenant broker) may fill the store');
  t.equal(loadConfig({ RESPONSES_STORE_OWNER_MB: '16' }).responsesStoreOwnerMb, 16);
  t.equal(loadConfig({ RESPONSES_STORE_OWNER_MB: '0.25' }).responsesStoreOwnerMb, 0.25, 'fractions');
});

t.test('bad values name the variable', async (t) => {
  const cases: Record<string, string>[] = [
    { PORT: 'eighty' },
    { PORT: '70000' },
    { MAX_BODY_BYTES: '-1' },
    { RATE_LIMIT_RPS: 'fast' },
    { AB_WEIGHT_A: '0', AB_WEIGHT_B: '0' },
    { SHADOW_ENABLED: 'maybe' },
    { CANARY_PERCENT: '120' },
    { STICKY_COOKIE: 'a b' },
    { LOG_LEVEL: 'loud' },
    { INFER_THREADS: '0' },
    { THREAD_SEMI_SPACE_MB: '-1' },
    { RESPONSES_STORE_OWNER_MB: '-1' },
    { ADMIN_TOKEN: 'short' },
    { GRPC_TLS_CERT: '/nonexistent/cert.pem', GRPC_TLS_KEY: '/nonexistent/key.pem' },
    { GRPC_TLS_KEY: '/etc', GRPC_TLS_CERT: 'package.json' },
    { UWS_HEADER_PATCH: 'nope' },
    // Without DATABASE_URL too: the start that turns tracking on must not be the first to say so.
    { TRACKING_WRITE_MODE: 'bogus' },
    { TRACKING_FLUSH_MS: '5' },
    // Below 5 s, idle gRPC clients were cut though they acked the ping (docs/grpc.md).
    { GRPC_KEEPALIVE_TIMEOUT_MS: '1000' },
    // Number() reads a blank as 0 and hex as a number: a blank grace period cut every stream at once.
    { SHUTDOWN_GRACE_S: ' ' },
    { SHUTDOWN_GRACE_S: '\t' },
    { AB_WEIGHT_B: ' ' },
    { SHUTDOWN_GRACE_S: '0x1e' },
    { MODEL_VA_PATH: '/nonexistent.onnx' },
    // A model without its manifest beside it (it stopped the start with exit 1, naming no variable).
    { MODEL_VA_PATH: onnxWithoutManifest },
  ];
  for (const env of cases) {
    const name = Object.keys(env)[0]!;
    const err = t.throws(() => loadConfig(env)) as ConfigError;
    t.ok(err instanceof ConfigError, name);
    t.equal(err.variable, name);
    t.match(err.message, name);
  }
});

t.test('UWS_HEADER_PATCH takes the spellings of the other true/false variables', async (t) => {
  t.equal(loadConfig({}).uwsHeaderPatch, true);
  for (const v of ['false', 'FALSE', '0', 'off', 'no']) t.equal(loadConfig({ UWS_HEADER_PATCH: v }).uwsHeaderPatch, false, v);
  for (const v of ['true', 'On', '1', 'yes']) t.equal(loadConfig({ UWS_HEADER_PATCH: v }).uwsHeaderPatch, true, v);
});

t.test('tracking settings: validated without DATABASE_URL, used with it', async (t) => {
  t.equal(loadConfig({ TRACKING_WRITE_MODE: 'insert' }).tracking, undefined, 'no DATABASE_URL: tracking is off');
  const c = loadConfig({ DATABASE_URL: 'postgres://u@db/x', TRACKING_WRITE_MODE: 'insert', TRACKING_FLUSH_MS: '100' }).tracking!;
  t.equal(c.databaseUrl, 'postgres://u@db/x');
  t.equal(c.writeMode, 'insert');
  t.equal(c.flushMs, 100);
  t.equal(c.bufferRows, 100_000);
  t.ok(Object.isFrozen(c));
});

t.test('values that started a broker refusing every request now stop the start', async (t) => {
  // A bucket below one token: every request was 429, for ever.
  t.throws(() => loadConfig({ RATE_LIMIT_RPS: '5', RATE_LIMIT_BURST: '0.5' }), { name: 'ConfigError', message: /RATE_LIMIT_BURST/ });
  t.equal(loadConfig({ RATE_LIMIT_RPS: '5', RATE_LIMIT_BURST: '1' }).rateLimitBurst, 1);
  t.equal(loadConfig({ RATE_LIMIT_RPS: '5', RATE_LIMIT_BURST: '0' }).rateLimitBurst, 0);
  // A JWT public key that does not parse: every token was 401 with nothing in the log.
  const { publicKey } = (await import('node:crypto')).generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  t.equal(loadConfig({ AUTH_MODE: 'jwt', JWT_PUBLIC_KEY: pem }).jwt.publicKey, pem);
  t.ok(loadConfig({ AUTH_MODE: 'jwt', JWT_PUBLIC_KEY: pem.replace(/\n/g, '\\n') }), 'with \\n for the line breaks');
  for (const bad of [pem.slice(0, 80), 'garbage', pem.replace('PUBLIC KEY', 'CERTIFICATE')]) {
    t.throws(() => loadConfig({ AUTH_MODE: 'jwt', JWT_PUBLIC_KEY: bad }), { name: 'ConfigError', message: /JWT_PUBLIC_KEY/ });
  }
});

t.test('a BROKER_FF_* that names no flag is said at start, not refused (a typo kept its flag at its default unsaid)', async (t) => {
  const c = loadConfig({ BROKER_FF_CAPACITY_GATNG: 'false', BROKER_FF_STICKY_ROUTING: 'true' });
  t.same(c.featureFlags, { sticky_routing: true });
  t.equal(c.notes.length, 1);
  t.match(c.notes[0], /^BROKER_FF_CAPACITY_GATNG names no feature flag and is ignored \(flags: .*BROKER_FF_CAPACITY_GATING/);
  t.same(loadConfig({ BROKER_FF_STICKY_ROUTING: 'true' }).notes, []);
});

t.test('OTEL_* set for a whole pod do not stop a broker that does not trace; with traces on they do', async (t) => {
  const pod = { OTEL_TRACES_SAMPLER_ARG: 'endpoint=http://jaeger:14250,initialSamplingRate=0.25', OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' };
  t.equal(loadConfig(pod).otel.enabled, false);
  t.throws(() => loadConfig({ ...pod, OTEL_ENABLED: 'true' }), { name: 'ConfigError' });
  // service.name: OTEL_SERVICE_NAME, else OTEL_RESOURCE_ATTRIBUTES', else ours.
  t.equal(loadConfig({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=payments-gw,k=v' }).otel.serviceName, 'payments-gw');
  t.equal(loadConfig({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=payments-gw', OTEL_SERVICE_NAME: 'edge-1' }).otel.serviceName, 'edge-1');
  t.equal(loadConfig({}).otel.serviceName, 'edge-broker');
  // The batch span processor's settings and the export timeout; OTEL_TRACES_EXPORTER=none exports nothing.
  const on = { OTEL_ENABLED: 'true' };
  t.same(loadConfig(on).otel.batch, { maxQueue: 2048, maxBatch: 512, intervalMs: 1000, timeoutMs: 5000 });
  t.same(loadConfig({ ...on, OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '500', OTEL_BSP_SCHEDULE_DELAY: '200', OTEL_EXPORTER_OTLP_TIMEOUT: '3000' }).otel.batch, { maxQueue: 100, maxBatch: 100, intervalMs: 200, timeoutMs: 3000 }, 'a batch no larger than the queue');
  t.equal(loadConfig({ ...on, OTEL_EXPORTER_OTLP_TIMEOUT: '3000', OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '7000' }).otel.batch.timeoutMs, 7000, 'the traces-only one wins');
  t.throws(() => loadConfig({ ...on, OTEL_BSP_SCHEDULE_DELAY: 'soon' }), { name: 'ConfigError', message: /OTEL_BSP_SCHEDULE_DELAY/ });
  t.equal(loadConfig({ OTEL_BSP_SCHEDULE_DELAY: 'soon' }).otel.enabled, false, 'ignored with traces off');
  t.equal(loadConfig({ ...on, OTEL_TRACES_EXPORTER: 'none' }).otel.enabled, false, 'OTEL_TRACES_EXPORTER=none: off');
  t.match(loadConfig({ ...on, OTEL_TRACES_EXPORTER: 'zipkin' }).otel.notes, [/OTEL_TRACES_EXPORTER=zipkin is not spoken/]);
  // Nor a password that is not percent-encoded, in either endpoint.
  for (const name of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT']) {
    const bad = { [name]: 'http://u:%ZZ@127.0.0.1:4318' };
    t.equal(loadConfig(bad).otel.enabled, false, `${name}: traces off, the broker starts`);
    t.throws(() => loadConfig({ ...bad, OTEL_ENABLED: 'true' }), { name: 'ConfigError', message: new RegExp(`${name}: has a user or password`) });
  }
});
