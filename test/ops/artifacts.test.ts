// The operations artifacts (Dockerfile, compose.yml, prometheus/, grafana/, deploy/,
// load/) are not run here (no Docker engine, no cluster, no k6): this checks what can be
// checked without them. Everything parses; the PromQL of rules and dashboards names only
// metrics the broker declares (src/obs/metrics.ts), with their labels; the env vars given
// to the broker exist and are documented; the fleet files pass the broker's own validator;
// the pieces point at each other (service names, ports, mounts, anchors); the k6 scripts
// only target a local BASE_URL; and the image runs the compiled broker, without tsx.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { loadConfig } from '../../src/config/env.ts';
import { parseBrokerConfig } from '../../src/config/fleet-file.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- parsed YAML/JSON, checked field by field
type Doc = any;

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (p: string): string => readFileSync(join(ROOT, p), 'utf8');
const exists = (p: string): boolean => existsSync(join(ROOT, p));

function walk(dir: string, ext: RegExp): string[] {
  const out: string[] = [];
  const abs = join(ROOT, dir);
  if (!existsSync(abs)) return out;
  for (const name of readdirSync(abs).sort()) {
    const p = join(dir, name);
    if (statSync(join(ROOT, p)).isDirectory()) out.push(...walk(p, ext));
    else if (ext.test(name)) out.push(p);
  }
  return out;
}

function yamlDocs(p: string): Doc[] {
  const docs = parseAllDocuments(read(p));
  const list = Array.isArray(docs) ? docs : [docs];
  for (const d of list) if (d.errors.length > 0) throw new Error(`${p}: ${d.errors.map((e) => e.message).join('; ')}`);
  return list.map((d) => d.toJS()).filter((d) => d !== null && d !== undefined);
}

// ---------------------------------------------------------------- the broker's metrics

interface MetricDecl {
  readonly type: 'counter' | 'gauge' | 'histogram';
  readonly labels: readonly string[];
}

/** Broker metrics from src/obs/metrics.ts: `name: '...'` of every `new Counter|Gauge|Histogram({...})`. */
function declaredMetrics(): Map<string, MetricDecl> {
  const src = read('src/obs/metrics.ts');
  const out = new Map<string, MetricDecl>();
  for (const m of src.matchAll(/new (Counter|Gauge|Histogram)\(\{([\s\S]*?)\}\)/g)) {
    const name = /name: '([^']+)'/.exec(m[2]!)?.[1];
    if (name === undefined) throw new Error(`a ${m[1]} in metrics.ts has no name: '...'`);
    const labels = [.../labelNames: \[([^\]]*)\]/.exec(m[2]!)?.[1]?.matchAll(/'([^']+)'/g) ?? []].map((l) => l[1]!);
    out.set(name, { type: m[1]!.toLowerCase() as MetricDecl['type'], labels });
  }
  return out;
}

/** prom-client's default metrics (process_*, nodejs_*), as the broker registers them. */
async function defaultMetrics(): Promise<Map<string, MetricDecl>> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const out = new Map<string, MetricDecl>();
  for (const m of await registry.getMetricsAsJSON()) {
    const labels = (registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] } | undefined)?.labelNames ?? [];
    out.set(m.name, { type: String(m.type) as MetricDecl['type'], labels });
  }
  registry.clear();
  return out;
}

/** Every series name a metric exposes: a histogram is _bucket, _sum and _count. */
function seriesNames(metrics: Map<string, MetricDecl>): Map<string, { base: string; labels: readonly string[] }> {
  const out = new Map<string, { base: string; labels: readonly string[] }>();
  for (const [name, d] of metrics) {
    if (d.type === 'histogram') {
      out.set(`${name}_bucket`, { base: name, labels: [...d.labels, 'le'] });
      out.set(`${name}_sum`, { base: name, labels: d.labels });
      out.set(`${name}_count`, { base: name, labels: d.labels });
    } else {
      out.set(name, { base: name, labels: d.labels });
    }
  }
  return out;
}

// Labels Prometheus adds to every scraped series (job, instance) and the usual
// Kubernetes/static target labels.
const TARGET_LABELS = ['job', 'instance', 'service', 'namespace', 'pod', 'container', 'node'];

// ---------------------------------------------------------------- PromQL

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

const stripStrings = (s: string): string => s.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');

/** Metric names an expression selects (functions, keywords, labels, strings, ranges and Grafana variables left out). */
function promqlMetricNames(expr: string): string[] {
  let s = stripStrings(expr);
  s = s.replace(/\{[^}]*\}/g, ' ');
  s = s.replace(/\[[^\]]*\]/g, ' ');
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  s = s.replace(/\$\{[^}]*\}|\$\w+/g, ' ');
  const names: string[] = [];
  for (const m of s.matchAll(/[A-Za-z_:][\w:]*/g)) {
    const id = m[0];
    const before = s[m.index! - 1] ?? '';
    if (/[\d.]/.test(before)) continue; // exponent of a number (1e3)
    if (/^\s*\(/.test(s.slice(m.index! + id.length))) continue; // function or aggregation
    if (PROMQL_WORDS.has(id.toLowerCase())) continue;
    names.push(id);
  }
  return names;
}

/** `metric{label="..."}` selectors: the metric and the label names it matches on. */
function promqlSelectors(expr: string): { metric: string; labels: string[] }[] {
  const s = stripStrings(expr);
  const out: { metric: string; labels: string[] }[] = [];
  for (const m of s.matchAll(/([A-Za-z_:][\w:]*)\s*\{([^}]*)\}/g)) {
    out.push({ metric: m[1]!, labels: [...m[2]!.matchAll(/([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)/g)].map((l) => l[1]!) });
  }
  return out;
}

t.test('the PromQL name extractor', async (t) => {
  t.same(promqlMetricNames('histogram_quantile(0.99, sum by (route, le) (rate(http_request_duration_seconds_bucket{job=~"$job", route!~"a|b"}[$__rate_interval])))'), ['http_request_duration_seconds_bucket']);
  t.same(promqlMetricNames('(sum(rate(a_total[5m])) or vector(0)) / on (job) group_left b:c:d * 1e3 > bool 0.5 and up == 0'), ['a_total', 'b:c:d', 'up']);
  t.same(promqlSelectors('x{a="1", b=~"p{2}"} + y{ c != "", d!~"x=y"}'), [{ metric: 'x', labels: ['a', 'b'] }, { metric: 'y', labels: ['c', 'd'] }]);
});

// ---------------------------------------------------------------- what the checks read

const compose = parse(read('compose.yml')) as Doc;
const promConfig = parse(read('prometheus/prometheus.yml')) as Doc;
const ruleFiles = (promConfig.rule_files as string[]).map((f) => join('prometheus', f));
const rules: { file: string; name: string; kind: 'record' | 'alert'; expr: string; rule: Doc }[] = [];
for (const file of ruleFiles) {
  for (const group of (parse(read(file)) as Doc).groups) {
    for (const rule of group.rules) {
      rules.push({ file, name: rule.record ?? rule.alert, kind: rule.record !== undefined ? 'record' : 'alert', expr: String(rule.expr), rule });
    }
  }
}
const recorded = new Set(rules.filter((r) => r.kind === 'record').map((r) => r.name));
const dashboardFiles = walk('grafana', /\.json$/);
const dashboards = dashboardFiles.map((f) => ({ file: f, json: JSON.parse(read(f)) as Doc }));
const k8sDocs = yamlDocs('deploy/k8s/edge-broker.yaml');
const redisDocs = yamlDocs('deploy/k8s/redis.yaml');
const operations = read('docs/operations.md');

/** Every PromQL expression of a dashboard: panel targets, annotations, variable queries. */
function dashboardExprs(node: Doc, out: string[] = []): string[] {
  if (Array.isArray(node)) {
    for (const n of node) dashboardExprs(n, out);
  } else if (node !== null && typeof node === 'object') {
    if (typeof node.expr === 'string') out.push(node.expr);
    if (node.type === 'query' && node.name !== undefined) {
      const q = typeof node.query === 'string' ? node.query : node.query?.query;
      const lv = typeof q === 'string' ? /^label_values\((.*),\s*(\w+)\s*\)$/.exec(q.trim()) : null;
      if (lv !== null) out.push(`${lv[1]}`);
    }
    for (const v of Object.values(node)) dashboardExprs(v, out);
  }
  return out;
}

// ---------------------------------------------------------------- tests

t.test('every YAML and JSON artifact parses', async (t) => {
  const yamls = ['compose.yml', ...walk('prometheus', /\.ya?ml$/), ...walk('deploy', /\.ya?ml$/), ...walk('grafana', /\.ya?ml$/)];
  t.ok(yamls.length >= 8, `found ${yamls.length} YAML files`);
  for (const f of yamls) t.doesNotThrow(() => t.ok(yamlDocs(f).length > 0, `${f} has a document`), f);
  t.same(dashboardFiles, [
    'grafana/dashboards/edge-broker-executive.json',
    'grafana/dashboards/edge-broker-inference.json',
    'grafana/dashboards/edge-broker-infrastructure.json',
    'grafana/dashboards/edge-broker-llm.json',
    'grafana/dashboards/edge-broker-operations.json',
  ]);
  t.equal(k8sDocs.length, 8, 'the k8s file has its eight documents');
});

t.test('PromQL in rules and dashboards names only declared metrics, with their labels', async (t) => {
  const declared = declaredMetrics();
  const nameCount = [...read('src/obs/metrics.ts').matchAll(/\bname: '/g)].length;
  t.equal(declared.size, nameCount, 'every name: in metrics.ts belongs to a parsed declaration');
  const defaults = await defaultMetrics();
  for (const name of defaults.keys()) t.match(name, /^(process|nodejs)_/, `default metric ${name}`);
  const broker = seriesNames(declared);
  const builtin = seriesNames(defaults);
  const known = (name: string) => broker.get(name) ?? builtin.get(name) ?? (name === 'up' ? { base: 'up', labels: [] } : undefined);

  const exprs = [
    ...rules.map((r) => ({ where: `${r.file}: ${r.name}`, expr: r.expr })),
    ...dashboards.flatMap((d) => dashboardExprs(d.json).map((expr) => ({ where: d.file, expr }))),
  ];
  t.ok(exprs.length > 100, `${exprs.length} expressions`);
  const used = new Set<string>();
  for (const { where, expr } of exprs) {
    const names = promqlMetricNames(expr);
    t.ok(names.length > 0 || /^vector\([\d.]+\)$/.test(expr.trim()), `${where}: selects a metric (or is a constant objective): ${expr}`);
    for (const name of names) {
      if (recorded.has(name)) continue;
      const k = known(name);
      if (k === undefined) {
        t.fail(`${where}: ${name} is neither declared in src/obs/metrics.ts, a prom-client default, up, nor a recording rule`, { expr });
        continue;
      }
      used.add(k.base);
      if (declared.get(k.base)?.type === 'histogram') t.not(name, k.base, `${where}: a histogram is queried through _bucket/_sum/_count`);
    }
    for (const sel of promqlSelectors(expr)) {
      const k = known(sel.metric);
      if (k === undefined) continue; // recording rules carry the labels of their `by`
      for (const label of sel.labels) {
        if (!k.labels.includes(label) && !TARGET_LABELS.includes(label)) t.fail(`${where}: ${sel.metric} has no label ${label} (it has: ${k.labels.join(', ') || 'none'})`, { expr });
      }
    }
  }
  // Dashboards should cover every broker metric; a new metric without a panel is reported
  // as a TODO, not a failure, so that adding one in src/ does not break this suite.
  for (const name of declared.keys()) {
    if (!used.has(name)) t.fail(`${name} is on no dashboard and in no rule`, { todo: 'add a panel to grafana/dashboards/' });
  }
  // Alerts and dashboards only read recording rules that exist.
  for (const r of rules.filter((r) => r.kind === 'record')) t.match(r.name, /^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$/, `${r.name} follows level:metric:operation`);
});

t.test('recording and alert rules', async (t) => {
  t.same(ruleFiles, ['prometheus/recording_rules.yml', 'prometheus/alert_rules.yml', 'prometheus/fleet_rules.yml']);
  const names = rules.map((r) => r.name);
  t.same([...new Set(names)].sort(), [...names].sort(), 'rule names are unique');
  for (const want of [
    'route:http_request_duration_seconds:p50_5m',
    'route:http_request_duration_seconds:p99_5m',
    'route:http_requests_5xx:ratio_rate5m',
    'arm:inference_request_success:ratio_rate5m',
    'group:llm_ttft_seconds:p99_5m',
    'route:broker_overhead_seconds:p99_5m',
  ]) t.ok(recorded.has(want), `records ${want}`);
  const alerts = rules.filter((r) => r.kind === 'alert');
  // Seed 001's operations model: 99.9 % availability and latency SLOs, their multi-window
  // burn-rate alerts, LLMLatencyHigh; each of those alerts is fired by a promtool unit test.
  for (const want of ['slo:availability:objective', 'slo:latency:objective', 'group:llm_requests_errors:ratio_rate5m']) t.ok(recorded.has(want), `records ${want}`);
  for (const w of ['5m', '30m', '1h', '2h', '6h', '1d', '3d']) {
    t.ok(recorded.has(`job:slo_availability_errors:ratio_rate${w}`), `availability SLI over ${w}`);
    t.ok(recorded.has(`job:slo_latency_errors:ratio_rate${w}`), `latency SLI over ${w}`);
  }
  const sloAlerts = ['EdgeBrokerAvailabilityBudgetBurnFast', 'EdgeBrokerAvailabilityBudgetBurnSlow', 'EdgeBrokerLatencyBudgetBurnFast', 'EdgeBrokerLatencyBudgetBurnSlow', 'LLMLatencyHigh'];
  const unitTests = walk('prometheus/tests', /\.ya?ml$/).flatMap((f) => (parse(read(f)) as Doc).tests as Doc[]);
  for (const name of sloAlerts) {
    const a = alerts.find((r) => r.name === name);
    t.ok(a, `alert ${name}`);
    const fired = unitTests.some((u) => (u.alert_rule_test ?? []).some((x: Doc) => x.alertname === name && (x.exp_alerts ?? []).length > 0));
    t.ok(fired, `a promtool unit test in prometheus/tests fires ${name}`);
  }
  for (const name of sloAlerts.slice(0, 4)) {
    const expr = alerts.find((r) => r.name === name)?.expr ?? '';
    t.ok(/ratio_rate(1h|1d)[\s\S]*and[\s\S]*ratio_rate(5m|2h)[\s\S]*or[\s\S]*ratio_rate(6h|3d)[\s\S]*and[\s\S]*ratio_rate(30m|6h)/.test(expr), `${name} pairs a long and a short window, twice`);
  }
  for (const want of ['AllServersUnhealthy', 'ServerUnhealthy', 'QueueFull', 'CircuitBreakerStuckOpen', 'HighMemoryUsage', 'EdgeBrokerDown', 'EdgeBrokerHigh5xxRatio', 'EdgeBrokerHighLatencyP99', 'EdgeBrokerCanaryRolledBack', 'EdgeBrokerInferenceWorkerFailures', 'EdgeBrokerLlmMidstreamErrors', 'EdgeBrokerLlmUpstreamRateLimited']) {
    t.ok(alerts.some((a) => a.name === want), `alert ${want}`);
  }
  const slugsOf = (text: string): Set<string> => new Set([...text.matchAll(/^#{1,6}\s+(.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-')));
  for (const a of alerts) {
    t.match(a.rule.labels?.severity, /^(critical|warning)$/, `${a.name} has a severity`);
    t.type(a.rule.annotations?.summary, 'string', `${a.name} has a summary`);
    // The runbook is a heading of docs/operations.md, or of docs/fleet.md for the fleet's alerts.
    const [, doc, anchor] = /^(docs\/(?:operations|fleet)\.md)#(.+)$/.exec(a.rule.annotations?.runbook ?? '') ?? [];
    const text = doc === undefined ? '' : doc === 'docs/operations.md' ? operations : read(doc);
    t.ok(anchor !== undefined && slugsOf(text).has(anchor), `${a.name}'s runbook points at a heading of its doc (${a.rule.annotations?.runbook})`);
    t.ok(text.includes(a.name), `${doc} says what to do about ${a.name}`);
    if (a.rule.for !== undefined) t.match(String(a.rule.for), /^\d+[smh]$/, `${a.name}: for is a duration`);
  }
  // The job the alerts select is the job Prometheus scrapes.
  const jobs = (promConfig.scrape_configs as Doc[]).map((s) => s.job_name);
  for (const a of alerts) for (const m of a.expr.matchAll(/job="([^"]+)"/g)) t.ok(jobs.includes(m[1]), `${a.name}: job ${m[1]} is scraped`);
});

/**
 * How long the broker may take to stop after SIGTERM: SHUTDOWN_GRACE_S (as set in `env`,
 * else its default in src/config/env.ts) for in-flight requests, then up to 1 s for open
 * streams to end with their error event (src/app.ts, src/plane/worker.ts).
 */
function drainSeconds(env: Record<string, string>): number {
  const main = read('src/main.ts');
  // The signal's stop: closeOnce() with no grace, i.e. broker.close(undefined), the default.
  if (!/const stop = [\s\S]*?closeOnce\(\);/.test(main) || !/broker!\.close\(graceMs\)/.test(main)) throw new Error('src/main.ts no longer stops on a signal with the default grace: update this test');
  const def = /'SHUTDOWN_GRACE_S', (\d+)/.exec(read('src/config/env.ts'))?.[1];
  if (def === undefined) throw new Error('src/config/env.ts: no SHUTDOWN_GRACE_S default');
  return Number(env.SHUTDOWN_GRACE_S ?? def) + 1;
}

/** Env vars of the broker: read by src/config/env.ts and documented in the product docs. */
function checkBrokerEnv(t: Test, where: string, env: Record<string, string>): void {
  const envTs = read('src/config/env.ts');
  // The product's reference docs; the runbook (docs/operations.md) does not count, it only points at them.
  const docs = ['README.md', ...walk('docs', /\.md$/).filter((f) => f !== join('docs', 'operations.md'))].map(read).join('\n');
  t.ok(Object.keys(env).length > 0, `${where} sets env vars`);
  for (const name of Object.keys(env)) {
    t.ok(envTs.includes(`'${name}'`) || new RegExp(`\\benv\\.${name}\\b`).test(envTs), `${where}: ${name} is read by src/config/env.ts`);
    t.ok(docs.includes(`\`${name}\``), `${where}: ${name} is documented in README.md or docs/`);
  }
  t.doesNotThrow(() => loadConfig(env), `${where}: the values pass the broker's own validation`);
}

// promtool (from Prometheus; Debian: apt-get install prometheus, which .ci/run does) parses
// PromQL for real and runs the rule unit tests. It is required: without it this test fails.
const promtool = (() => {
  try {
    execFileSync('promtool', ['--version'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
})();

t.test('promtool: config, rule unit tests, dashboard queries', async (t) => {
  if (!promtool) return t.fail('promtool is not installed: apt-get install prometheus (.ci/run installs it)');
  const run = (args: string[]): string => execFileSync('promtool', args, { cwd: ROOT, encoding: 'utf8', stdio: 'pipe' });
  t.doesNotThrow(() => run(['check', 'config', 'prometheus/prometheus.yml']), 'promtool check config');
  t.doesNotThrow(() => run(['test', 'rules', ...walk('prometheus/tests', /\.ya?ml$/)]), 'promtool test rules');
  // Dashboard queries as recording rules, with Grafana's variables replaced by values.
  const dir = mkdtempSync(join(tmpdir(), 'eb-promql-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const exprs = dashboards.flatMap((d) => dashboardExprs(d.json));
  const rules = exprs.map((expr, i) => ({
    record: `grafana:query:${i}`,
    expr: expr.replace(/\$__rate_interval|\$__interval/g, '1m').replace(/\$__range/g, '1h').replace(/\$\{?\w+\}?/g, '.*'),
  }));
  writeFileSync(join(dir, 'dashboards.yml'), JSON.stringify({ groups: [{ name: 'dashboards', rules }] }));
  let out = '';
  try {
    out = execFileSync('promtool', ['check', 'rules', join(dir, 'dashboards.yml')], { encoding: 'utf8', stdio: 'pipe' });
  } catch (err) {
    out = String((err as { stdout?: string }).stdout ?? '') + String((err as { stderr?: string }).stderr ?? '');
  }
  t.match(out, new RegExp(`SUCCESS: ${rules.length} rules found`), `promtool parses the ${rules.length} dashboard queries`);
});

t.test('compose.yml', async (t) => {
  const s = compose.services as Doc;
  t.same(Object.keys(s).sort(), ['broker', 'grafana', 'mock-upstream', 'prometheus', 'redis']);
  t.equal(s.broker.build, '.');
  t.equal(s['mock-upstream'].image, s.broker.image, 'the mock runs from the broker image');
  t.match(s.redis.image, /^redis:7/);

  // ${VAR:-default} -> default, as compose interpolates with VAR unset.
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(s.broker.environment as Record<string, unknown>)) {
    env[k] = String(v).replace(/\$\{\w+(?::?-([^}]*))?\}/g, (_m, def: string | undefined) => def ?? '');
  }
  checkBrokerEnv(t, 'compose broker', env);
  const grace = /^(\d+)s$/.exec(String(s.broker.stop_grace_period))?.[1];
  t.ok(grace !== undefined && Number(grace) > drainSeconds(env), `stop_grace_period ${s.broker.stop_grace_period} exceeds the broker's drain`);

  // Host paths of bind mounts exist.
  for (const [name, svc] of Object.entries(s as Record<string, Doc>)) {
    for (const v of svc.volumes ?? []) {
      const host = String(v).split(':')[0]!;
      if (host.startsWith('./')) t.ok(exists(host), `${name}: ${host} exists`);
    }
  }
  // The fleet file the broker mounts is where BROKER_CONFIG says, and valid.
  const mount = (s.broker.volumes as string[]).map((v) => v.split(':')).find((p) => p[1] === env.BROKER_CONFIG);
  t.ok(mount, 'BROKER_CONFIG is a mounted file');
  const fleet = parseBrokerConfig(parse(read(mount![0]!)), mount![0]!, {});
  const mockCmd = (s['mock-upstream'].command as string[]).join(' ');
  t.match(mockCmd, /^node dist\/mock-upstream\/main\.js --port 9000 --host 0\.0\.0\.0\b/, 'the mock runs compiled (the image has no tsx)');
  const providers = new Set<string>();
  for (const g of fleet.modelGroups.values()) {
    for (const d of g.deployments) {
      providers.add(d.provider);
      const u = new URL(d.url);
      t.equal(`${u.hostname}:${u.port}`, 'mock-upstream:9000', `${d.id} points at the mock`);
    }
  }
  t.same([...providers].sort(), ['ollama', 'openai'], 'the mock plays both providers');
  t.ok(fleet.modelGroups.has('chat-small'), 'chat-small, the k6 default model, is served');

  // Prometheus scrapes the broker service on its port; Grafana reads Prometheus.
  const targets = (promConfig.scrape_configs as Doc[]).find((c) => c.job_name === 'edge-broker').static_configs[0].targets;
  t.same(targets, [`broker:${env.PORT}`]);
  const ds = (parse(read('grafana/provisioning/datasources/prometheus.yml')) as Doc).datasources[0];
  t.equal(ds.url, 'http://prometheus:9090');
  t.equal(ds.type, 'prometheus');
  const gVolumes = (s.grafana.volumes as string[]).map((v) => v.split(':'));
  const dashMount = gVolumes.find((p) => p[0] === './grafana/dashboards')?.[1];
  const provider = (parse(read('grafana/provisioning/dashboards/dashboards.yml')) as Doc).providers[0];
  t.equal(provider.options.path, dashMount, 'the dashboard provider reads where compose mounts the dashboards');
  t.ok(gVolumes.some((p) => p[0] === './grafana/provisioning' && p[1] === '/etc/grafana/provisioning'));
  const home = s.grafana.environment.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH as string;
  t.ok(home.startsWith(`${dashMount}/`) && exists(join('grafana/dashboards', home.slice(dashMount!.length + 1))), 'the home dashboard exists');
  const pVolumes = (s.prometheus.volumes as string[]).map((v) => v.split(':'));
  t.ok(pVolumes.some((p) => p[0] === './prometheus' && p[1] === '/etc/prometheus'), 'prometheus/ is mounted where --config.file looks');
  t.ok((s.prometheus.command as string[]).includes('--config.file=/etc/prometheus/prometheus.yml'));
});

// Another app's http_request_duration_seconds (prom-client's and Express's default name) fired
// the broker's latency and burn-rate alerts: every metric a rule reads is the broker's job's.
t.test("every rule reads the broker's job only", async (t) => {
  for (const r of rules) {
    const names = new Set(promqlMetricNames(r.expr).filter((n) => !recorded.has(n)));
    for (const m of r.expr.matchAll(/([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?/g)) {
      if (!names.has(m[1]!)) continue;
      t.match(m[2] ?? '', /\bjob="edge-broker"/, `${r.file}: ${r.name} reads ${m[1]} of job="edge-broker"`);
    }
  }
});

t.test('Grafana dashboards', async (t) => {
  const uids = new Set<string>();
  for (const { file, json } of dashboards) {
    t.type(json.title, 'string', `${file}: title`);
    t.notOk(uids.has(json.uid), `${file}: uid ${json.uid} is unique`);
    uids.add(json.uid);
    const vars = json.templating.list as Doc[];
    t.ok(vars.some((v) => v.type === 'datasource' && v.query === 'prometheus' && v.name === 'datasource'), `${file}: has a Prometheus datasource variable`);
    const ids = new Set<number>();
    const walkPanels = (panels: Doc[]): void => {
      for (const p of panels) {
        t.notOk(ids.has(p.id), `${file}: panel id ${p.id} is unique`);
        ids.add(p.id);
        t.ok(p.gridPos.x + p.gridPos.w <= 24, `${file}: ${p.title} fits the 24 columns`);
        if (p.type !== 'row') {
          t.equal(p.datasource?.uid, '${datasource}', `${file}: ${p.title} uses the datasource variable`);
          t.ok(p.targets.length > 0, `${file}: ${p.title} has a query`);
          for (const target of p.targets) t.equal(target.datasource?.uid, '${datasource}', `${file}: ${p.title} target uses the datasource variable`);
        }
        walkPanels(p.panels ?? []);
      }
    };
    walkPanels(json.panels);
    for (const v of vars.filter((v) => v.type === 'query')) {
      t.equal(v.datasource?.uid, '${datasource}', `${file}: variable ${v.name} uses the datasource variable`);
      // "All" as .* matched every job in Prometheus (its own self-scrape, other apps).
      if (v.name === 'job' || v.name === 'instance') t.equal(v.allValue, undefined, `${file}: variable ${v.name}'s All is the values it lists, not .*`);
    }
    // Every $variable a query uses is defined.
    const names = new Set(vars.map((v) => v.name as string));
    for (const expr of dashboardExprs(json)) {
      for (const m of expr.matchAll(/\$(\w+)/g)) if (!m[1]!.startsWith('__')) t.ok(names.has(m[1]!), `${file}: $${m[1]} is a dashboard variable`);
    }
  }
});

t.test('Kubernetes manifest', async (t) => {
  const byKind = new Map<string, Doc>(k8sDocs.map((d) => [d.kind, d]));
  t.same([...byKind.keys()].sort(), ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Namespace', 'NetworkPolicy', 'PodDisruptionBudget', 'Secret', 'Service']);
  const ns = byKind.get('Namespace').metadata.name;
  for (const d of k8sDocs) if (d.kind !== 'Namespace') t.equal(d.metadata.namespace, ns, `${d.kind} is in namespace ${ns}`);

  const dep = byKind.get('Deployment');
  const pod = dep.spec.template.spec;
  const c = pod.containers[0];
  t.equal(dep.spec.replicas, 2);
  const podLabels = dep.spec.template.metadata.labels;
  const matches = (sel: Record<string, string>) => Object.entries(sel).every(([k, v]) => podLabels[k] === v);
  t.ok(matches(dep.spec.selector.matchLabels), 'the Deployment selects its pods');
  t.ok(matches(byKind.get('Service').spec.selector), 'the Service selects the pods');
  t.ok(matches(byKind.get('PodDisruptionBudget').spec.selector.matchLabels), 'the PDB selects the pods');
  t.equal(byKind.get('HorizontalPodAutoscaler').spec.scaleTargetRef.name, dep.metadata.name);
  t.ok(byKind.get('HorizontalPodAutoscaler').spec.minReplicas >= 2);

  // Env: literal values, or keys of the Secret.
  const secret = byKind.get('Secret');
  const env: Record<string, string> = {};
  for (const e of c.env as Doc[]) {
    if (e.value !== undefined) env[e.name] = String(e.value);
    else {
      const ref = e.valueFrom?.secretKeyRef;
      t.equal(ref?.name, secret.metadata.name, `${e.name} comes from the Secret`);
      t.ok(ref && ref.key in (secret.stringData ?? secret.data ?? {}), `${e.name}: the Secret has key ${ref?.key}`);
      env[e.name] = String((secret.stringData ?? {})[ref.key] ?? '');
    }
  }
  checkBrokerEnv(t, 'k8s Deployment', env);

  // Ports and probes.
  t.equal(String(c.ports[0].containerPort), env.PORT, 'containerPort is PORT');
  t.equal(c.readinessProbe.httpGet.path, '/ready');
  t.equal(c.livenessProbe.httpGet.path, '/healthz');
  t.equal(c.startupProbe.httpGet.path, '/ready');
  t.equal(pod.securityContext.runAsNonRoot, true);
  t.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, 'resources are set');
  // Graceful termination: the preStop sleep plus the broker's drain fit in the grace period.
  const sleep = Number(c.lifecycle.preStop.exec.command[1]);
  const drain = drainSeconds(env);
  t.ok(sleep > 0 && pod.terminationGracePeriodSeconds >= sleep + drain + 5, `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} covers preStop ${sleep} s + ${drain} s drain`);

  // BROKER_CONFIG is the ConfigMap's broker.yaml, mounted, and valid.
  const cm = byKind.get('ConfigMap');
  const mount = (c.volumeMounts as Doc[]).find((m) => env.BROKER_CONFIG!.startsWith(`${m.mountPath}/`));
  t.ok(mount, 'BROKER_CONFIG is under a volume mount');
  const vol = (pod.volumes as Doc[]).find((v) => v.name === mount.name);
  t.equal(vol.configMap?.name, cm.metadata.name, 'that volume is the ConfigMap');
  const key = env.BROKER_CONFIG!.slice(mount.mountPath.length + 1);
  t.ok(key in cm.data, `the ConfigMap has ${key}`);
  t.doesNotThrow(() => parseBrokerConfig(parse(cm.data[key]), key, {}), 'the fleet passes the broker validator');
  // NetworkPolicy: it selects the pods, restricts both directions, lets clients and
  // Prometheus reach the HTTP port, and lets the pods resolve names and reach every upstream.
  const np = byKind.get('NetworkPolicy').spec;
  t.ok(matches(np.podSelector.matchLabels), 'the NetworkPolicy selects the pods');
  t.same([...np.policyTypes].sort(), ['Egress', 'Ingress'], 'the NetworkPolicy restricts ingress and egress');
  const portName = c.ports[0].name;
  t.ok((np.ingress as Doc[]).some((r) => r.from === undefined && (r.ports as Doc[]).some((p) => p.port === portName || String(p.port) === String(c.ports[0].containerPort))), 'ingress is open on the HTTP port (clients, Prometheus)');
  t.notOk((np.ingress as Doc[]).some((r) => r.ports === undefined), 'no ingress rule opens every port');
  const egressPorts = (proto: string) => (np.egress as Doc[]).flatMap((r) => (r.ports as Doc[]).filter((p) => (p.protocol ?? 'TCP') === proto).map((p) => Number(p.port)));
  t.ok(egressPorts('UDP').includes(53) && egressPorts('TCP').includes(53), 'egress allows DNS');
  for (const g of parseBrokerConfig(parse(cm.data[key]), key, {}).modelGroups.values()) {
    for (const d of g.deployments) {
      const u = new URL(d.url);
      const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
      t.ok(egressPorts('TCP').includes(port), `egress allows ${d.id}'s upstream port ${port}`);
    }
  }
  // A read-only root filesystem still gets a writable /tmp.
  if (c.securityContext?.readOnlyRootFilesystem) t.ok((c.volumeMounts as Doc[]).some((m) => m.mountPath === '/tmp'), '/tmp is writable');

  // The replicas share a Redis: REDIS_URL names redis.yaml's Service, whose selector finds its
  // pods; the broker may reach it and only the broker may.
  const redisKind = new Map<string, Doc>(redisDocs.map((d) => [d.kind, d]));
  t.same([...redisKind.keys()].sort(), ['Deployment', 'NetworkPolicy', 'Service']);
  for (const d of redisDocs) t.equal(d.metadata.namespace, ns, `redis ${d.kind} is in namespace ${ns}`);
  const redisUrl = new URL(env.REDIS_URL!);
  const svc = redisKind.get('Service');
  t.equal(redisUrl.hostname, svc.metadata.name, 'REDIS_URL names the Redis Service');
  t.equal(Number(redisUrl.port), svc.spec.ports[0].port, "and its port");
  const redisPod = redisKind.get('Deployment').spec.template;
  const redisLabels = redisPod.metadata.labels;
  const selects = (sel: Record<string, string>, labels: Record<string, string>) => Object.entries(sel).every(([k, v]) => labels[k] === v);
  t.ok(selects(svc.spec.selector, redisLabels), 'the Service selects the Redis pods');
  t.ok(selects(redisKind.get('Deployment').spec.selector.matchLabels, redisLabels), 'the Deployment selects its pods');
  t.notOk(selects(dep.spec.selector.matchLabels, redisLabels), "the broker's selectors (Service, PDB, NetworkPolicy) do not take the Redis pods");
  t.equal(redisPod.spec.containers[0].ports[0].containerPort, 6379);
  t.ok((np.egress as Doc[]).some((r) => (r.to as Doc[] | undefined)?.some((to) => to.podSelector !== undefined && selects(to.podSelector.matchLabels, redisLabels)) && (r.ports as Doc[]).some((p) => Number(p.port) === Number(redisUrl.port))), 'egress allows the Redis pods on its port');
  const redisNp = redisKind.get('NetworkPolicy').spec;
  t.ok(selects(redisNp.podSelector.matchLabels, redisLabels), "Redis's NetworkPolicy selects its pods");
  t.ok((redisNp.ingress as Doc[]).every((r) => (r.from as Doc[] | undefined)?.every((f) => f.podSelector !== undefined && selects(f.podSelector.matchLabels, podLabels))), 'only the broker pods reach Redis');
});

t.test('k6 scripts only target a local BASE_URL and are bounded', async (t) => {
  const scripts = walk('load/k6', /\.js$/);
  t.same(scripts.map((f) => relative('load/k6', f)), ['healthz.js', 'infer.js', 'llm-stream.js']);
  for (const f of scripts) {
    const src = read(f);
    t.doesNotThrow(() => execFileSync(process.execPath, ['--check', join(ROOT, f)], { stdio: 'pipe' }), `${f} is valid JavaScript`);
    const base = /const BASE_URL = \(__ENV\.BASE_URL \|\| '([^']+)'\)/.exec(src);
    t.ok(base, `${f}: BASE_URL comes from __ENV.BASE_URL with a default`);
    t.match(base?.[1], /^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?$/, `${f}: the default is this machine`);
    for (const m of src.matchAll(/\bhttps?:\/\/[^\s'"`)]+/g)) t.match(m[0], /^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?(\/|$)/, `${f}: ${m[0]} is local`);
    // Every request goes to a URL built on BASE_URL: directly, or through a const built from it.
    const calls = [...src.matchAll(/\bhttp\.(get|post|put|patch|del|head|options|request|asyncRequest|batch)\(\s*([^,)]+)/g)];
    t.ok(calls.length > 0, `${f} makes requests`);
    for (const call of calls) {
      let arg = call[2]!.trim();
      if (call[1] === 'request' || call[1] === 'asyncRequest') arg = /^[^,]+,\s*([^,)]+)/.exec(src.slice(call.index! + call[0].length - call[2]!.length))?.[1]?.trim() ?? '';
      if (/^\w+$/.test(arg)) {
        const def = new RegExp(`const ${arg} = ([^;]+);`).exec(src)?.[1] ?? '';
        const templates = [...def.matchAll(/`([^`]*)`/g)].map((m) => m[1]!);
        t.ok(templates.length > 0 && templates.every((s) => s.startsWith('${BASE_URL}/')), `${f}: ${arg} is built on BASE_URL`);
      } else {
        t.ok(arg.startsWith('`${BASE_URL}/'), `${f}: ${arg} is built on BASE_URL`);
      }
    }
    // Bounded: every scenario has a duration or an iteration count.
    const executors = [...src.matchAll(/executor: '([\w-]+)'([\s\S]*?)\}/g)];
    t.ok(executors.length > 0, `${f} declares its scenarios`);
    for (const e of executors) t.match(e[2], /\b(duration|iterations):/, `${f}: the ${e[1]} scenario is bounded`);
  }
  const infer = read('load/k6/infer.js');
  const image = /__ENV\.IMAGE \|\| '([^']+)'/.exec(infer)?.[1];
  t.ok(image && exists(join('load/k6', image)), `infer.js's default image ${image} exists`);
});

t.test('Dockerfile', async (t) => {
  const df = read('Dockerfile');
  const pkg = JSON.parse(read('package.json')) as Doc;
  t.match(df, /^ARG NODE_IMAGE=node:20-bookworm-slim$/m);
  const froms = [...df.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]);
  t.ok(froms.length >= 2 && froms.every((f) => f === '${NODE_IMAGE}'), 'every stage is node:20-bookworm-slim');
  const final = df.slice(df.lastIndexOf('\nFROM '));
  t.match(final, /^USER node$/m, 'runs as the non-root user node');
  t.match(final, /^EXPOSE 8080$/m);
  t.match(final, /^HEALTHCHECK [\s\S]*\/healthz/m);
  t.match(final, /^COPY models \.\/models$/m);
  // CMD is `npm start` without npm (nor its prestart build) in between: PID 1 gets SIGTERM.
  const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(final)![1]!) as string[];
  t.equal(cmd.join(' '), pkg.scripts.start.replace(/^exec /, ''), 'CMD is the start script');
  t.equal(cmd.join(' '), 'node dist/main.js', 'the compiled broker');
  t.match(df, /^COPY --from=build \/app\/dist \.\/dist$/m, 'dist/ comes from the build stage');
  t.match(df, /^RUN npm run build$/m, 'which runs the build script');
  // The runtime stage has the production install only, and nothing in it needs tsx.
  t.match(df, /npm ci --omit=dev/);
  t.equal(pkg.dependencies.tsx, undefined, 'tsx is not a production dependency');
  t.equal(pkg.dependencies.typescript, undefined, 'nor is TypeScript');
  t.notMatch(final, /tsx|src\//, 'the runtime stage neither runs tsx nor copies the sources');

  // Sources the build copies from the context exist and are not excluded by .dockerignore.
  const ignore = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  const excluded = (p: string): boolean => {
    let out = false;
    for (const rule of ignore) {
      const neg = rule.startsWith('!');
      const pat = neg ? rule.slice(1) : rule;
      const re = new RegExp('^' + pat.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*') + '(/.*)?$');
      if (re.test(p)) out = !neg;
    }
    return out;
  };
  for (const m of df.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
    for (const src of m[1]!.split(/\s+/)) {
      t.ok(exists(src), `COPY source ${src} exists`);
      t.notOk(excluded(src.replace(/\/$/, '')), `COPY source ${src} is in the build context`);
    }
  }
  t.ok(excluded('node_modules') && excluded('.git') && excluded('test'), '.dockerignore keeps node_modules, .git and tests out');
});
