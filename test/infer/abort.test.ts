// A client that goes away while its image waits: the image leaves the queue unsent, and the
// request has one outcome, the client's (499), never also a success or failure of the model.
// With data-plane threads (the default) the abort crosses to the control plane's queue.
import t from 'tap';
import sharp from 'sharp';
import { startTestBroker, metricValue } from '../helpers/broker.ts';
import { writeForeignModel } from './foreign-model.ts';

// One image per batch: a worker's two slots hold two images, the rest wait in the queue.
const modelPath = writeForeignModel({ manifest: { batching: { max_batch_size: 1 } } });

// /v1/infer, and v2 (served by the control plane, where data-plane threads forward it).
for (const [threads, api] of [['2', 'v1'], ['0', 'v1'], ['2', 'v2'], ['0', 'v2']] as const) {
  t.test(`FRONT_THREADS=${threads}, ${api}: aborted while queued, an image is not computed nor counted`, async (t) => {
    const tb = await startTestBroker({ FRONT_THREADS: threads, INFER_THREADS: '1', INFER_MAX_PIXELS: String(2000 * 2000), MODEL_VA_PATH: modelPath, MODEL_VB_PATH: modelPath, AB_WEIGHT_A: '1', AB_WEIGHT_B: '0', SHADOW_ENABLED: 'false' });
    t.teardown(() => tb.close());
    const model = tb.broker.infer!.models.A.manifest.name;
    // Large PNGs: tens of ms of decode each, so one worker leaves most of them queued.
    const big = (await sharp({ create: { width: 1900, height: 1900, channels: 3, background: '#5a7' } }).png({ compressionLevel: 1 }).toBuffer()).toString('base64');
    const success0 = await metricValue(tb.url, 'inference_request_success_total');
    const failure0 = await metricValue(tb.url, 'inference_request_failure_total');
    const computed0 = await metricValue(tb.url, 'inference_count_total', { model });
    const N = 16;
    const aborts = Array.from({ length: N }, () => new AbortController());
    const input = tb.broker.infer!.models.A.manifest.input.name;
    const route = api === 'v1' ? '/v1/infer' : '/v2/models/:model/infer';
    const [path, body] = api === 'v1' ? ['/v1/infer', JSON.stringify({ image_b64: big })] : [`/v2/models/${model}/infer`, JSON.stringify({ inputs: [{ name: input, datatype: 'BYTES', shape: [1], data: [big] }] })];
    const closed0 = await metricValue(tb.url, 'http_requests_errors_total', { route, status: '499' });
    const sent = aborts.map((a) =>
      fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: a.signal }).then(
        (r) => r.status,
        () => 'aborted',
      ),
    );
    // Wait until images are queued behind the one worker (not a fixed time: on a loaded box the
    // requests may not even have arrived), then the clients of all but the first two leave.
    const pool = tb.broker.infer!.currentPool;
    for (let i = 0; i < 500 && pool.queueSize < 6; i++) await new Promise((r) => setTimeout(r, 10));
    t.ok(pool.queueSize >= 6, `images queued when the clients leave (${pool.queueSize})`);
    for (const a of aborts.slice(2)) a.abort();
    const outcomes = await Promise.all(sent);
    const ok = outcomes.filter((o) => o === 200).length;
    // Let the worker finish what it had started, and the counters settle.
    let computed = -1;
    for (let i = 0; i < 100; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const c = await metricValue(tb.url, 'inference_count_total', { model });
      if (c === computed && pool.queueSize === 0) break;
      computed = c;
    }
    // A client may leave while its 200 is on the wire (counted: it was served), never before.
    const successes = (await metricValue(tb.url, 'inference_request_success_total')) - success0;
    t.ok(successes >= ok && successes <= computed - computed0, `successes (${successes}): every 200 the clients got (${ok}), none for an image not computed`);
    t.equal((await metricValue(tb.url, 'inference_request_failure_total')) - failure0, 0, 'a client leaving is no failure of the model');
    t.ok(computed - computed0 < N, `images computed: ${computed - computed0} of ${N} (the queued ones of gone clients were dropped)`);
    t.equal(pool.queueSize, 0, 'nothing left queued');
    // Each gone client is one 499 under its route (a forwarded one too, not as "unmatched"), but
    // one that left while its 200 was on the wire (served: no 499). A client gone after its
    // answer was computed, before it was written, is both a success and a 499 (README): so the
    // gone clients without a 499 are at most the successes the clients did not get.
    const closed = (await metricValue(tb.url, 'http_requests_errors_total', { route, status: '499' })) - closed0;
    const gone = outcomes.filter((o) => o === 'aborted').length;
    t.ok(closed <= gone && gone - closed <= successes - ok, `499s under ${route} (${closed}) for ${gone} gone clients, ${successes - ok} of whose answers were computed`);
  });
}
