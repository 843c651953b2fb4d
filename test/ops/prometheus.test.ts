// The dashboards and rules, proven on a real Prometheus: it scrapes a broker (threads,
// real models, a mock fleet with every outcome) every second under a small mixed load,
// loads recording_rules.yml and alert_rules.yml, and then every dashboard panel query,
// every variable query and every recording rule must return data through Prometheus'
// HTTP API. The load makes the error-only series happen (5xx, upstream 429s, streams cut
// mid-way, queue timeouts, quota refusals, invalid images), so no query is excused.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { startTestBroker, admin } from '../helpers/broker.ts';
import { fashionPngs } from '../helpers/images.ts';
import { startOpsFleet } from '../../bench/lib/ops-fleet.ts';
import { freePort } from '../../bench/lib/process.ts';
import { startRedis } from '../helpers/redis.ts';
import { startOtlpReceiver } from '../helpers/otlp.ts';
import { clients } from '../helpers/grpc.ts';
import { startPostgres } from '../helpers/postgres.ts';
import { stringify } from 'yaml';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- parsed YAML/JSON
type Doc = any;
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every PromQL expression of a dashboard (panel targets and label_values variable selectors). */
function dashboardExprs(node: Doc, out: string[] = []): string[] {
  if (Array.isArray(node)) for (const n of node) dashboardExprs(n, out);
  else if (node !== null && typeof node === 'object') {
    if (typeof node.expr === 'string') out.push(node.expr);
    if (node.type === 'query' && node.name !== undefined) {
      const q = typeof node.query === 'string' ? node.query : node.query?.query;
      const lv = typeof q === 'string' ? /^label_values\((.*),\s*(\w+)\s*\)$/.exec(q.trim()) : null;
      if (lv !== null) out.push(lv[1]!);
    }
    for (const v of Object.values(node)) dashboardExprs(v, out);
  }
  return out;
}

t.test('every dashboard query and recording rule returns data from a real Prometheus', async (t) => {
  const fleet = await startOpsFleet({ slowTtftMs: 300 });
  t.teardown(() => fleet.close());
  // Replicated (Redis) and with gRPC: their panels need data too. (Periodic health checks stay
  // off: they would rightly take the failing mocks out of routing, and their error series with them.)
  const redis = await startRedis(t);
  const grpcPort = await freePort();
  // Traces on, to a receiver: the span counter has its panel too.
  const otlp = await startOtlpReceiver();
  t.teardown(() => otlp.close());
  // Request tracking on, with a priced group and a key with a budget: its panels need data too.
  const pgc = await startPostgres(t);
  const fleetDoc = parse(readFileSync(fleet.path, 'utf8')) as Doc;
  fleetDoc.prices = { models: { chat: { inputPer1M: 1, outputPer1M: 2 } } };
  fleetDoc.apiKeys = { 'ops-budget-key': { budget: { limit: 100, period: 'day' } } };
  writeFileSync(fleet.path, stringify(fleetDoc));
  const tb = await startTestBroker({
    BROKER_CONFIG: fleet.path,
    REDIS_URL: redis.url,
    GRPC_PORT: String(grpcPort),
    OTEL_ENABLED: 'true',
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    DATABASE_URL: await pgc.createDatabase('ops'),
    TRACKING_FLUSH_MS: '100',
    SHADOW_ENABLED: 'true',
    BROKER_FF_STICKY_ROUTING: 'true',
    BROKER_FF_QUOTA_ENFORCEMENT: 'true',
    BROKER_FF_OUTPUT_PREDICTION: 'true',
  });
  t.teardown(() => tb.close());

  // Prometheus on a free port with a temporary data directory, scraping every second.
  const dir = mkdtempSync(join(tmpdir(), 'eb-prom-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  writeFileSync(
    join(dir, 'prometheus.yml'),
    JSON.stringify({
      global: { scrape_interval: '1s', scrape_timeout: '900ms', evaluation_interval: '1s' },
      rule_files: [join(ROOT, 'prometheus/recording_rules.yml'), join(ROOT, 'prometheus/alert_rules.yml'), join(ROOT, 'prometheus/fleet_rules.yml')],
      scrape_configs: [{ job_name: 'edge-broker', static_configs: [{ targets: [`127.0.0.1:${tb.broker.port}`] }] }],
    }),
  );
  const prom = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let promLog = '';
  prom.stderr.on('data', (c: Buffer) => (promLog = (promLog + c.toString()).slice(-4000)));
  const promExit = new Promise((r) => prom.once('exit', r));
  t.teardown(async () => {
    prom.kill('SIGTERM');
    await promExit;
  });
  const api = `http://127.0.0.1:${port}/api/v1`;
  const get = async (path: string): Promise<Doc> => (await (await fetch(`${api}${path}`)).json()) as Doc;

  for (let i = 0; ; i++) {
    try {
      const targets = await get('/targets');
      if (targets.data.activeTargets[0]?.health === 'up') break;
    } catch {
      // not listening yet
    }
    if (i > 150) throw new Error(`Prometheus did not scrape the broker:\n${promLog}`);
    await sleep(100);
  }

  // Small mixed load for ~6 s: inference (valid and invalid images), LLM streams and whole
  // replies over both client APIs, and every failure the fleet can produce.
  const images = await fashionPngs(4);
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) }).then((r) => r.text().then(() => r.status));
  const chat = (model: string, stream: boolean, text = 'hello') => post('/v1/chat/completions', { model, stream, messages: [{ role: 'user', content: text }] });
  const statuses = new Map<string, Set<number>>();
  const note = (what: string) => (s: number) => {
    if (!statuses.has(what)) statuses.set(what, new Set());
    statuses.get(what)!.add(s);
  };
  // A flag changed at run time (broker_flag_changes_total), then set back.
  const put = (path: string, body: unknown) => fetch(`${tb.url}${path}`, { method: 'PUT', headers: { 'content-type': 'application/json', ...admin }, body: JSON.stringify(body) }).then((r) => r.text().then(() => r.status));
  note('flag')(await put('/api/industrial/flags/performance_routing', { enabled: false }));
  // Fleet: a server that fails its health check, a breaker forced open and reset; a refused
  // credential; gRPC calls.
  const orchestrate = (path: string, body?: unknown) => fetch(`${tb.url}/api/orchestrator${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...admin }, body: body === undefined ? undefined : JSON.stringify(body) }).then((r) => r.text().then(() => r.status));
  note('fleet')(await orchestrate('/servers/add', { id: 'dead', provider: 'openai', url: 'http://127.0.0.1:9', models: ['x'] }));
  note('fleet')(await orchestrate('/circuit-breakers/good-openai/mock-model/open'));
  note('fleet')(await orchestrate('/circuit-breakers/good-openai/mock-model/reset'));
  note('auth')(await fetch(`${tb.url}/api/orchestrator/health`).then((r) => r.status));
  const rpc = clients(grpcPort);
  t.teardown(() => rpc.close());
  const grpcCalls = () =>
    Promise.all([new Promise((r) => rpc.models.ListModels({}, () => r(undefined))), new Promise((r) => rpc.inference.Infer({ image: Buffer.alloc(0) }, () => r(undefined)))]); // OK, INVALID_ARGUMENT
  const until = Date.now() + 6000;
  for (let round = 0; Date.now() < until; round++) {
    const img = images[round % images.length]!;
    await Promise.all([
      post('/v1/infer', { image_b64: img.b64 }).then(note('infer')),
      post('/v1/infer', { image_b64: 'not an image' }).then(note('infer-bad')),
      chat('chat', true, 'the same prompt for sticky routing').then(note('chat-stream')),
      chat('chat', false).then(note('chat')),
      post('/v1/chat/completions', { model: 'chat', messages: [{ role: 'user', content: 'spend' }] }, { 'x-api-key': 'ops-budget-key' }).then(note('budgeted')),
      post('/api/chat', { model: 'chat', messages: [{ role: 'user', content: 'hi' }] }).then(note('ollama-chat')),
      post('/api/generate', { model: 'chat', prompt: 'hi', stream: false }).then(note('ollama-generate')),
      chat('flaky', true).then(note('flaky')),
      chat('cut', true).then(note('cut')),
      chat('tight', false).then(note('tight')),
      chat('tight', false).then(note('tight')),
      chat('quota', false).then(note('quota')),
      // The same deterministic request: a miss, then hits (the cached group's mode is on).
      chat('cached', round % 2 === 0, 'always the same').then(note('cached')),
      chat('fallback', false).then(note('fallback')),
      chat('junk', true).then(note('junk')),
      chat('stalled', true).then(note('stalled')),
      chat('no-such-model', false).then(note('unknown-model')),
      fetch(`${tb.url}/no/such/path`).then((r) => r.text().then(() => r.status)).then(note('404')),
      grpcCalls(),
    ]);
  }
  note('flag')(await put('/api/industrial/flags/performance_routing', { enabled: true }));
  t.same([...statuses.get('infer')!], [200], 'inference answered');
  t.ok(statuses.get('cut')!.has(200), 'cut streams started with 200');
  t.ok(statuses.get('tight')!.has(504), `the tight group timed out in its queue: ${[...statuses.get('tight')!]}`);
  t.ok(statuses.get('quota')!.has(429), 'the quota group refused');
  t.same([...statuses.get('fallback')!], [200], 'the fallback group answered from chat');
  t.same([...statuses.get('junk')!], [200], 'garbage dropped, the stream went on');
  t.same([...statuses.get('flag')!], [200], 'flag changes accepted');
  t.same([...statuses.get('fleet')!], [200], 'fleet changes accepted');
  t.same([...statuses.get('auth')!], [401], 'a refused credential');
  // Three more scrapes, so that every series that appeared late has two samples to rate.
  await sleep(3500);

  const query = async (expr: string): Promise<Doc> => {
    const body = await get(`/query?query=${encodeURIComponent(expr)}`);
    return body;
  };
  const hasData = (r: Doc): boolean =>
    r.status === 'success' &&
    (r.data.resultType === 'vector' || r.data.resultType === 'matrix'
      ? r.data.result.length > 0 && r.data.result.some((s: Doc) => (s.value ?? s.values?.at(-1))?.[1] !== 'NaN')
      : r.data.result !== undefined);

  // Grafana's variables: every job and instance, every value of the others; the rate
  // interval and range cover the load (Grafana would pick 4 scrape intervals and the time range).
  const files = readdirSync(join(ROOT, 'grafana/dashboards')).filter((f) => f.endsWith('.json')).sort();
  t.equal(files.length, 5, 'five dashboards');
  let count = 0;
  for (const f of files) {
    const json = JSON.parse(readFileSync(join(ROOT, 'grafana/dashboards', f), 'utf8')) as Doc;
    // Annotations mark events (a canary rollback, a worker crash, a flag change) with
    // `changes(x[2m]) > 0`: the one narrow exception, they are checked without their `> 0`
    // (the series exists and the query runs), since the load cannot roll back a canary.
    const annotations = new Set(dashboardExprs(json.annotations));
    for (const raw of new Set(dashboardExprs(json))) {
      const expr = (annotations.has(raw) ? raw.replace(/\s*>\s*0\s*$/, '') : raw).replace(/\$__rate_interval|\$__interval/g, '30s').replace(/\$__range/g, '5m').replace(/\$\{?\w+\}?/g, '.*');
      const r = await query(expr);
      t.ok(hasData(r), `${f}: ${raw}`, hasData(r) ? {} : { result: r });
      count++;
    }
  }
  t.ok(count > 100, `${count} dashboard queries`);

  // Recording rules: each expression through the query API, and each rule as Prometheus
  // itself evaluates it (loaded, healthy, and its recorded series present).
  const rules: { record: string; expr: string }[] = [];
  for (const file of ['recording_rules.yml']) {
    for (const g of (parse(readFileSync(join(ROOT, 'prometheus', file), 'utf8')) as Doc).groups) for (const r of g.rules) if (r.record) rules.push(r);
  }
  for (const r of rules) {
    const res = await query(r.expr);
    t.ok(hasData(res), `recording rule ${r.record}`, hasData(res) ? {} : { result: res });
  }
  const loaded = await get('/rules');
  const evaluated = (loaded.data.groups as Doc[]).flatMap((g) => g.rules as Doc[]);
  t.equal(evaluated.filter((r) => r.type === 'recording').length, rules.length, 'Prometheus loaded every recording rule');
  const unhealthy = evaluated.filter((r) => r.health !== 'ok' && r.health !== 'unknown');
  t.same(unhealthy.map((r) => `${r.name}: ${r.lastError}`), [], 'no rule failed to evaluate');
  for (const r of rules) {
    const res = await query(r.record);
    t.ok(res.data.result.length > 0, `Prometheus recorded ${r.record}`);
  }
});
