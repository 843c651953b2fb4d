// An inference request's priority comes from its API key, as an LLM request's does:
// x-broker-priority may only lower it. Before, the header alone counted, so a batch key
// given priority 2 jumped the image queue by sending `critical` (HTTP, gRPC, OIP alike).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { stringify } from 'yaml';
import { startTestBroker, postJson } from '../helpers/broker.ts';
import { writeForeignModel } from './foreign-model.ts';
import { cappedPriority, requestPriority } from '../../src/infer/admission.ts';

t.test('cappedPriority: the header may only lower the ceiling; no header gets the ceiling', async (t) => {
  t.equal(cappedPriority(9, 2), 2);
  t.equal(cappedPriority(1, 5), 1);
  t.equal(cappedPriority(undefined, 9), 9);
  t.equal(cappedPriority(9, undefined), 9, 'no ceiling (a bare service): as asked');
  const ceiling = (k: string | undefined) => (k === 'sk-vip' ? 9 : k === 'sk-batch' ? 2 : 5);
  const of = (headers: Record<string, string>) => ({ headers, caller: undefined });
  t.equal(requestPriority(of({ 'x-broker-priority': 'critical', 'x-api-key': 'sk-batch' }), ceiling), 2);
  t.equal(requestPriority(of({ authorization: 'Bearer sk-vip' }), ceiling), 9);
  t.equal(requestPriority(of({ 'x-broker-priority': 'low', authorization: 'Bearer sk-vip' }), ceiling), 1);
  t.equal(requestPriority(of({ 'x-broker-priority': 'critical' }), ceiling), 5, 'a keyless caller cannot raise itself');
  // A session is held to the key it was made from (client auth sets the caller).
  const byCaller = (k: string | undefined, c?: { keyId?: string }) => (c?.keyId === 'k_batch' ? 2 : ceiling(k));
  t.equal(requestPriority({ headers: { 'x-broker-priority': 'critical', authorization: 'Bearer sess_x' }, caller: { keyId: 'k_batch' } }, byCaller), 2, "a session gets its key's ceiling");
});

t.test('over HTTP: a priority-2 key asking for critical waits behind normal requests; a priority-9 key goes first without asking', async (t) => {
  const model = writeForeignModel({ manifest: { batching: { max_batch_size: 1 }, queue: { max_size: 256, timeout_ms: 60_000 } } });
  const dir = mkdtempSync(join(tmpdir(), 'eb-prio-'));
  const file = join(dir, 'broker.yaml');
  writeFileSync(file, stringify({ apiKeys: { 'sk-batch': { priority: 2 }, 'sk-vip': { priority: 9 } }, modelGroups: { g: { deployments: [{ id: 'unused', provider: 'openai', url: 'http://127.0.0.1:9', model: 'm' }] } } }));
  const tb = await startTestBroker({ BROKER_CONFIG: file, MODEL_VA_PATH: model, MODEL_VB_PATH: model, INFER_THREADS: '1', INFER_TASKS_PER_WORKER: '1' });
  t.teardown(() => tb.close());
  const url = `${tb.url}/v1/infer`;
  // A large PNG (decoded in full, unlike a JPEG sharp shrinks on load) keeps the one worker busy while the others queue behind it.
  const big = (await sharp({ create: { width: 4000, height: 4000, channels: 3, background: '#456' } }).png().toBuffer()).toString('base64');
  const small = (await sharp({ create: { width: 32, height: 32, channels: 3, background: '#789' } }).png().toBuffer()).toString('base64');
  const order: string[] = [];
  const send = (name: string, image: string, headers: Record<string, string>) =>
    postJson(url, { image_b64: image }, headers).then((r) => {
      t.equal(r.status, 200, `${name}: ${JSON.stringify(r.body).slice(0, 200)}`);
      order.push(name);
    });
  const busy = [send('busy', big, {}), send('busy', big, {}), send('busy', big, {})];
  await new Promise((r) => setTimeout(r, 50));
  const rest: Promise<void>[] = [];
  for (let i = 0; i < 4; i++) rest.push(send('normal', small, {}));
  for (let i = 0; i < 3; i++) rest.push(send('batch-critical', small, { 'x-api-key': 'sk-batch', 'x-broker-priority': 'critical' }));
  for (let i = 0; i < 3; i++) rest.push(send('vip', small, { authorization: 'Bearer sk-vip' }));
  await Promise.all([...busy, ...rest]);
  // Compared by mean rank: replies reach the client over separate connections and threads, so
  // two served back to back may arrive swapped; a priority that jumped the queue would move a
  // whole group from one end to the other.
  const served = order.filter((n) => n !== 'busy');
  const meanRank = (n: string) => {
    const ranks = served.flatMap((x, i) => (x === n ? [i] : []));
    return ranks.reduce((a, b) => a + b, 0) / ranks.length;
  };
  t.ok(meanRank('vip') < meanRank('normal'), `the priority-9 key went before the normal requests: ${served.join(' ')}`);
  t.ok(meanRank('batch-critical') > meanRank('normal'), `the priority-2 key's critical did not overtake: ${served.join(' ')}`);
});
