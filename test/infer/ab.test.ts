// A/B split, sticky cookie, shadow, canary rollback and promote, end to end.
import t from 'tap';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestBroker, postJson, metricValue, admin, json } from '../helpers/broker.ts';
import { fashionPngs, mapLimit } from '../helpers/images.ts';

const images = await fashionPngs(20);
const img = (i: number) => images[i % images.length]!.b64;

t.test('A/B 0.8/0.2 over 2,000 cookie-less requests, and sticky cookies', async (t) => {
  const tb = await startTestBroker({ AB_WEIGHT_A: '0.8', AB_WEIGHT_B: '0.2' });
  t.teardown(() => tb.close());
  const { A, B } = tb.broker.infer!.models;
  t.not(A.manifest.name, B.manifest.name, 'two different models');
  const arms = await mapLimit(Array.from({ length: 2000 }, (_, i) => i), 16, async (i) => {
    const res = await postJson(`${tb.url}/v1/infer`, { image_b64: img(i), top_k: 1 });
    t.equal(res.status, 200);
    const expectedModel = res.body.arm === 'A' ? A.manifest.name : B.manifest.name;
    if (res.body.model !== expectedModel) t.fail(`arm ${res.body.arm} answered with ${res.body.model}`);
    return res.body.arm as string;
  });
  const shareB = arms.filter((a) => a === 'B').length / arms.length;
  t.ok(Math.abs(shareB - 0.2) <= 0.05, `B share ${shareB} within 0.2 ± 0.05`);

  for (const arm of ['A', 'B']) {
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) {
      const res = await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) }, { cookie: `other=1; eb_arm=${arm}` });
      seen.add(res.body.arm);
      t.match(res.headers.get('set-cookie'), new RegExp(`^eb_arm=${arm};`));
    }
    t.same([...seen], [arm], `cookie ${arm} always gets arm ${arm}`);
  }
  t.ok((await metricValue(tb.url, 'inference_arm_assignments_total', { reason: 'sticky' })) >= 80);
});

t.test('shadow: client sees A, B runs on the same input, agreement is measured', async (t) => {
  const tb = await startTestBroker({ AB_WEIGHT_A: '1', AB_WEIGHT_B: '0', SHADOW_ENABLED: 'true' });
  t.teardown(() => tb.close());
  const { A } = tb.broker.infer!.models;
  for (let i = 0; i < 20; i++) {
    const res = await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) });
    t.equal(res.body.arm, 'A');
    t.equal(res.body.model, A.manifest.name);
  }
  // Shadow runs finish after the replies; wait for them to land in the metrics.
  let compared = 0;
  for (let i = 0; i < 100 && compared < 20; i++) {
    compared = (await metricValue(tb.url, 'inference_shadow_agreement_total')) + (await metricValue(tb.url, 'inference_shadow_disagreement_total'));
    if (compared < 20) await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(compared, 20, 'every request was shadowed and compared');
  t.ok((await metricValue(tb.url, 'inference_shadow_agreement_total')) >= 15, 'two good models mostly agree');
  t.ok((await metricValue(tb.url, 'inference_shadow_duration_seconds_count')) >= 20);
  t.equal(await metricValue(tb.url, 'inference_request_success_total', { arm: 'B' }), 0, 'shadow runs are not counted as B traffic');

  // After a promote A and B are one model: no shadow run (it would only run it twice).
  const first = await fetch(`${tb.url}/admin/promote`, { method: 'POST', headers: admin });
  t.equal(first.status, 200);
  t.equal((await json(first)).promoted, true);
  // Again: nothing to promote, said so, and the pool is not rebuilt (its workers are the same).
  const workers = await metricValue(tb.url, 'inference_worker_failures_total');
  const again = await fetch(`${tb.url}/admin/promote`, { method: 'POST', headers: admin });
  t.equal(again.status, 200);
  t.match(await json(again), { promoted: false, reason: /already the same model/ });
  t.equal(await metricValue(tb.url, 'inference_worker_failures_total'), workers);
  t.notOk(tb.logs.filter((l) => l.msg === 'promoted B to A').length > 1, 'promoted once');
  // The audit trail says what became A, and that the second promote changed nothing.
  const trail = await json(await fetch(`${tb.url}/api/audit?action=${encodeURIComponent('POST /admin/promote')}`, { headers: admin }));
  const model = (m: typeof A) => ({ name: m.manifest.name, version: m.manifest.version, path: m.path });
  const { B } = tb.broker.infer!.models;
  t.same(
    trail.entries.map((e: { before: unknown; after: unknown }) => [e.before, e.after]),
    [
      [{ A: model(B), B: model(B) }, { promoted: false, A: model(B), B: model(B) }],
      [{ A: model(A), B: model(B) }, { promoted: true, A: model(B), B: model(B) }],
    ],
    'each promote audited with the models before and after, newest first',
  );
  const before = await metricValue(tb.url, 'inference_shadow_duration_seconds_count');
  const count = await metricValue(tb.url, 'inference_count_total');
  for (let i = 0; i < 10; i++) t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) })).status, 200);
  await new Promise((r) => setTimeout(r, 200));
  t.equal(await metricValue(tb.url, 'inference_shadow_duration_seconds_count'), before, 'no shadow run after the promote');
  t.equal((await metricValue(tb.url, 'inference_count_total')) - count, 10, 'each image ran once');
});

t.test('canary rolls itself back when B fails', async (t) => {
  // A "broken" B: its manifest claims 3 channels for a 1-channel model, so it cannot run.
  const dir = mkdtempSync(join(tmpdir(), 'eb-canary-'));
  cpSync('models/vB.onnx', join(dir, 'vB.onnx'));
  const manifest = JSON.parse(readFileSync('models/vB.json', 'utf8'));
  manifest.input.channels = 3;
  manifest.input.mean = [0.5, 0.5, 0.5];
  manifest.input.std = [0.5, 0.5, 0.5];
  writeFileSync(join(dir, 'vB.json'), JSON.stringify(manifest));
  const tb = await startTestBroker({ MODEL_VB_PATH: join(dir, 'vB.onnx'), CANARY_ENABLED: 'true', CANARY_PERCENT: '30', CANARY_MIN_REQUESTS: '10' });
  t.teardown(() => tb.close());

  const statuses = await mapLimit(Array.from({ length: 300 }, (_, i) => i), 4, async (i) => {
    const res = await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) });
    return `${res.status}:${res.body.arm ?? res.body.error?.code}`;
  });
  // Found at start (graph-check.ts): B's requests answer 503 model_unavailable, which count against B.
  t.ok(statuses.includes('503:model_unavailable'), 'B failed while it had traffic');
  const cfg = await json(await fetch(`${tb.url}/admin/config`, { headers: admin }));
  t.equal(cfg.canary_percent, 0, 'B share set to 0');
  t.equal(cfg.b_share, 0);
  t.match(cfg.canary_rollback.reason, /error rate/);
  t.equal(await metricValue(tb.url, 'inference_canary_rollbacks_total'), 1);
  t.ok(tb.logs.some((l) => l.msg === 'canary rolled back: B gets no more traffic'), 'logged');
  // After the rollback everything is served by A, even a client stuck to B.
  for (let i = 0; i < 20; i++) {
    const res = await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) }, { cookie: 'eb_arm=B' });
    t.equal(res.status, 200);
    t.equal(res.body.arm, 'A');
  }
});

t.test('canary: a burst that fills B\'s own queue is not held against B', async (t) => {
  // B's queue holds 16 items: 8-item v2 requests naming B's version fill it, and the rest are
  // refused (503 overloaded) before any compute, as are those whose own deadline passes while
  // queued. Those say how loaded B's queue is, and those served ran in batches of 8 or more
  // where the split's run one by one: B's model does nothing wrong.
  const dir = mkdtempSync(join(tmpdir(), 'eb-canary-flood-'));
  cpSync('models/vB.onnx', join(dir, 'vB.onnx'));
  const manifest = JSON.parse(readFileSync('models/vB.json', 'utf8'));
  manifest.queue = { max_size: 16, timeout_ms: 10000 };
  writeFileSync(join(dir, 'vB.json'), JSON.stringify(manifest));
  const tb = await startTestBroker({ MODEL_VB_PATH: join(dir, 'vB.onnx'), CANARY_ENABLED: 'true', CANARY_PERCENT: '50', CANARY_MIN_REQUESTS: '10', INFER_THREADS: '1' });
  t.teardown(() => tb.close());
  const { A } = tb.broker.infer!.models;
  const burst = { inputs: [{ name: 'input', datatype: 'BYTES', shape: [8], data: Array.from({ length: 8 }, (_, i) => img(i)) }] };
  const codes = new Map<string, number>();
  for (let round = 0; round < 6; round++) {
    const normal = mapLimit(Array.from({ length: 10 }, (_, i) => i), 2, async (i) => {
      const res = await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) });
      return res.status === 200 ? '200' : `${res.status}:${res.body.error?.code}`;
    });
    const flood = await mapLimit(Array.from({ length: 30 }, (_, i) => i), 30, async (i) => {
      const body = i % 2 === 0 ? burst : { ...burst, parameters: { timeout: 1 } };
      const res = await postJson(`${tb.url}/v2/models/${A.manifest.name}/versions/2.0.0/infer`, body);
      return res.status === 200 ? '200' : `${res.status}:${res.body.code}`;
    });
    for (const c of flood) codes.set(c, (codes.get(c) ?? 0) + 1);
    // Split to B, normal traffic meets the same full queue: refused, not failed.
    for (const c of await normal) if (c !== '200' && c !== '503:overloaded') t.fail(`normal traffic: ${c}`);
  }
  t.ok((codes.get('503:overloaded') ?? 0) > 0, `B's queue refused some of the burst: ${JSON.stringify([...codes])}`);
  t.ok((codes.get('504:queue_timeout') ?? 0) > 0, `some waited past their own deadline: ${JSON.stringify([...codes])}`);
  const cfg = await json(await fetch(`${tb.url}/admin/config`, { headers: admin }));
  t.equal(cfg.canary_rollback, null, 'no rollback');
  t.equal(cfg.canary_percent, 50, 'B keeps its share');
  t.equal(await metricValue(tb.url, 'inference_canary_rollbacks_total'), 0);
});

t.test('promote: arm A answers with B model, without failing in-flight requests', async (t) => {
  const tb = await startTestBroker({ AB_WEIGHT_A: '1', AB_WEIGHT_B: '0' });
  t.teardown(() => tb.close());
  const { B } = tb.broker.infer!.models;
  const A = { ...tb.broker.infer!.models.A.manifest };
  let stop = false;
  const background = (async () => {
    const statuses: number[] = [];
    for (let i = 0; !stop; i++) statuses.push((await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) })).status);
    return statuses;
  })();
  // A promote meant for another version, or with a field it does not take, changes nothing.
  const post = (path: string, body?: unknown) => fetch(`${tb.url}${path}`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const wrong = await post('/admin/promote', { version: '9.9.9' });
  t.equal(wrong.status, 409);
  t.match(await json(wrong), { error: { code: 'config_conflict', message: `B is ${B.manifest.name} ${B.manifest.version}, not 9.9.9: nothing promoted` } });
  for (const [path, body, field] of [
    ['/admin/promote', { model: 'x' }, 'model'],
    ['/admin/promote?version=9.9.9', undefined, 'query'],
    ['/admin/promote', { version: 2 }, 'version'],
    ['/admin/warmup', { model: 'x' }, 'model'],
  ] as const) {
    const r = await post(path, body);
    t.equal(r.status, 400, `${path} ${JSON.stringify(body)}: 400`);
    const e = await json(r);
    t.match(e, { error: { code: 'invalid_request' } });
    t.equal(e.error.param ?? e.error.field ?? e.error.details?.field, field, `names ${field}`);
  }
  t.not(A.version, B.manifest.version);
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: img(0) })).body.version, A.version, 'A still serves');
  t.equal((await json(await fetch(`${tb.url}/admin/config`, { headers: admin }))).models.A.version, A.version, 'nothing was promoted');
  t.equal((await post('/admin/warmup', {})).status, 200, 'warmup with an empty body');
  const res = await post('/admin/promote', { version: B.manifest.version });
  t.equal(res.status, 200, "promote naming B's version");
  stop = true;
  const statuses = await background;
  t.ok(statuses.length > 0);
  t.ok(statuses.every((s) => s === 200), 'no request failed during promote');
  const after = await postJson(`${tb.url}/v1/infer`, { image_b64: img(0) });
  t.equal(after.body.arm, 'A');
  t.equal(after.body.model, B.manifest.name);
  t.equal(after.body.version, B.manifest.version);
  const cfg = await json(await fetch(`${tb.url}/admin/config`, { headers: admin }));
  t.equal(cfg.models.A.name, B.manifest.name);

  // Rolled back under load: the pair before the promote serves again, nothing failed.
  stop = false;
  const during = (async () => {
    const statuses: number[] = [];
    for (let i = 0; !stop; i++) statuses.push((await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) })).status);
    return statuses;
  })();
  const back = await post('/admin/rollback', {});
  stop = true;
  t.equal(back.status, 200);
  const undone = await json(back);
  t.equal(undone.rolled_back, true);
  t.same([undone.models.A.version, undone.models.B.version], [A.version, B.manifest.version], 'A and B as before the promote');
  t.ok((await during).every((s) => s === 200), 'no request failed during the rollback');
  const served = await postJson(`${tb.url}/v1/infer`, { image_b64: img(0) });
  t.same([served.body.arm, served.body.model, served.body.version], ['A', A.name, A.version], 'A serves its old model');
  const twice = await json(await post('/admin/rollback'));
  t.match(twice, { rolled_back: false, reason: /no promote to undo/ }, 'nothing left to undo');
  t.equal((await post('/admin/rollback?to=1.0.0')).status, 400, 'a query parameter is refused');
  // And it can be promoted again.
  t.equal((await json(await post('/admin/promote'))).promoted, true);
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: img(0) })).body.version, B.manifest.version);
});

t.test('A and B of different sizes: an img_size only one arm takes goes to it, whatever the split or cookie draws', async (t) => {
  const { writeForeignModel } = await import('./foreign-model.ts');
  // A: the foreign model, fixed 32x32; B: the bundled vB, fixed 28x28. An even split.
  const tb = await startTestBroker({ MODEL_VA_PATH: writeForeignModel(), AB_WEIGHT_A: '1', AB_WEIGHT_B: '1' });
  t.teardown(() => tb.close());
  const { A, B } = tb.broker.infer!.models;
  for (const [size, arm, model] of [
    [28, 'B', B.manifest.name],
    [32, 'A', A.manifest.name],
  ] as const) {
    for (let i = 0; i < 12; i++) {
      const res = await postJson(`${tb.url}/v1/infer`, { image_b64: img(i), img_size: size }, i % 2 === 0 ? {} : { cookie: `eb_arm=${arm === 'A' ? 'B' : 'A'}` });
      t.equal(res.status, 200, `img_size ${size}: ${JSON.stringify(res.body.error ?? '')}`);
      t.equal(res.body.arm, arm);
      t.equal(res.body.model, model);
      t.equal(res.body.pinned, undefined, 'not part of the reply');
      // Chosen for its size, whatever the split drew: the client is not pinned to it.
      t.equal(res.headers.get('set-cookie'), null, 'no sticky cookie');
    }
  }
  const v2Split = await postJson(`${tb.url}/v2/models/${A.manifest.name}/infer`, { inputs: [{ name: B.manifest.input.name, datatype: 'FP32', shape: [1, 1, 28, 28], data: Array(784).fill(0.5) }] });
  t.equal(v2Split.body.model_version, B.manifest.version, 'an even split: a v2 tensor only B takes goes to B');
  const none = await postJson(`${tb.url}/v1/infer`, { image_b64: img(0), img_size: 30 });
  t.equal(none.status, 400, 'a size neither arm takes');
  t.equal(none.body.error.code, 'invalid_img_size');
  // An arm the split gives no traffic is not reached by its size either: B at weight 0 is off.
  const off = await fetch(`${tb.url}/admin/config`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ ab_weight_a: 1, ab_weight_b: 0 }) });
  t.equal(off.status, 200);
  const toB = await postJson(`${tb.url}/v1/infer`, { image_b64: img(0), img_size: 28 });
  t.equal(toB.status, 400, 'B at weight 0: its size is refused');
  t.equal(toB.body.error.code, 'invalid_img_size');
  t.match(toB.body.error.message, /img_size must be 32/);
  // Nor by a v2 tensor only B takes (unversioned: the split's to place).
  const v2B = await postJson(`${tb.url}/v2/models/${A.manifest.name}/infer`, { inputs: [{ name: B.manifest.input.name, datatype: 'FP32', shape: [1, 1, 28, 28], data: Array(784).fill(0.5) }] });
  t.equal(v2B.status, 400, `B at weight 0: a v2 tensor only B takes is refused (${JSON.stringify(v2B.body).slice(0, 160)})`);
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: img(0), img_size: 32 })).body.arm, 'A');
  // And A, when B takes all of it.
  await fetch(`${tb.url}/admin/config`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ ab_weight_a: 0, ab_weight_b: 1 }) });
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: img(0), img_size: 32 })).status, 400, 'A at weight 0: its size is refused');
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: img(0), img_size: 28 })).body.arm, 'B');
});

t.test('shadow agreement is by label: a B whose classes are numbered otherwise agrees when it names the same class', async (t) => {
  const { writeForeignModel, FOREIGN } = await import('./foreign-model.ts');
  // The same graph twice; B's labels moved one place (class i is called labels[i+1]): every top
  // index is the same, no top label is.
  const rotated = [...FOREIGN.labels.slice(1), FOREIGN.labels[0]];
  // Shadow runs are the control plane's, and six images need no second inference thread.
  const tb = await startTestBroker({ MODEL_VA_PATH: writeForeignModel(), MODEL_VB_PATH: writeForeignModel({ manifest: { labels: rotated, version: '0.2.0' } }), AB_WEIGHT_A: '1', AB_WEIGHT_B: '0', SHADOW_ENABLED: 'true', FRONT_THREADS: '0', INFER_THREADS: '1' });
  t.teardown(() => tb.close());
  for (let i = 0; i < 6; i++) t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: img(i) })).status, 200);
  let compared = 0;
  for (let i = 0; i < 100 && compared < 6; i++) {
    compared = (await metricValue(tb.url, 'inference_shadow_agreement_total')) + (await metricValue(tb.url, 'inference_shadow_disagreement_total'));
    if (compared < 6) await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(compared, 6, 'every request was shadowed and compared');
  t.equal(await metricValue(tb.url, 'inference_shadow_agreement_total'), 0, 'same index, other label: no agreement');
});

t.test("shadow on, and a v2 tensor made for A's input, which B does not take: counted as skipped, not lost from the count", async (t) => {
  const { writeForeignModel } = await import('./foreign-model.ts');
  // Shadow runs are the control plane's, and one request needs no second inference thread.
  const tb = await startTestBroker({ MODEL_VA_PATH: writeForeignModel(), AB_WEIGHT_A: '1', AB_WEIGHT_B: '0', SHADOW_ENABLED: 'true', FRONT_THREADS: '0', INFER_THREADS: '1' });
  t.teardown(() => tb.close());
  const { A } = tb.broker.infer!.models;
  const before = await metricValue(tb.url, 'inference_shadow_requests_total', { outcome: 'skipped' });
  const res = await postJson(`${tb.url}/v2/models/${A.manifest.name}/infer`, { inputs: [{ name: A.manifest.input.name, datatype: 'FP32', shape: [2, 32, 32, 3], data: Array(2 * 32 * 32 * 3).fill(0.5) }] });
  t.equal(res.status, 200, JSON.stringify(res.body).slice(0, 200));
  t.equal(await metricValue(tb.url, 'inference_shadow_requests_total', { outcome: 'skipped' }), before + 2, 'both items');
});
