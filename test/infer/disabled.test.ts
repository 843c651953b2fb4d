// INFER_ENABLED=false: an LLM-only broker starts no inference pool, and /v1/infer says why it refuses.
import t from 'tap';
import { startTestBroker, postJson, json } from '../helpers/broker.ts';
import { fashionPngs } from '../helpers/images.ts';

for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}`, async (t) => {
    const tb = await startTestBroker({ INFER_ENABLED: 'false', FRONT_THREADS: threads });
    t.teardown(() => tb.close());
    t.equal(tb.broker.infer, undefined, 'no inference service, so no pool and no onnxruntime sessions');
    const res = await postJson(`${tb.url}/v1/infer`, { image_b64: (await fashionPngs(1))[0]!.b64 });
    t.equal(res.status, 503);
    t.equal(res.body.error.code, 'inference_disabled');
    t.match(res.body.error.message, /INFER_ENABLED/);
    t.equal(res.body.error.request_id, res.headers.get('trace-id'));
    const ready = await fetch(`${tb.url}/ready`);
    t.equal(ready.status, 200, 'ready: the broker serves what it is configured for');
    t.same(await json(ready), { ready: true, models_loaded: false, inference: 'disabled' });
    t.equal((await fetch(`${tb.url}/healthz`)).status, 200, 'still serving');
  });
}
