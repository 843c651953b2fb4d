// The committed Fashion-MNIST models: manifests are well-formed, the ONNX
// graphs load in onnxruntime-node with the names the manifests promise, and
// they classify real test images (first 1000 of t10k) at >= 85%.

import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { DATA_DIR, loadSplit } from '../../scripts/train/idx.ts';
import type { ModelManifest } from '../../scripts/train/manifest.ts';

const MODELS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'models');
const LABELS = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
const N = 1000;
const haveData = existsSync(join(DATA_DIR, 't10k-images-idx3-ubyte.gz'));

const expected = {
  vA: { name: 'fashion-mlp-a', version: '1.0.0' },
  vB: { name: 'fashion-mlp-b', version: '2.0.0' },
} as const;

const manifests: Partial<Record<keyof typeof expected, ModelManifest>> = {};

for (const [id, want] of Object.entries(expected) as [keyof typeof expected, (typeof expected)[keyof typeof expected]][]) {
  t.test(id, async (t) => {
    const manifest = JSON.parse(readFileSync(join(MODELS, `${id}.json`), 'utf8')) as ModelManifest;
    manifests[id] = manifest;

    t.same(Object.keys(manifest).sort(), ['batching', 'description', 'input', 'labels', 'name', 'output', 'queue', 'training', 'version']);
    // Issue 11: batched, which the graph's symbolic batch dimension allows (test/infer/batching.test.ts runs it).
    t.ok(manifest.batching!.max_batch_size > 1, `max_batch_size ${manifest.batching!.max_batch_size}`);
    t.equal(manifest.name, want.name);
    t.equal(manifest.version, want.version);
    t.type(manifest.description, 'string');
    t.ok(manifest.description.length > 0, 'has a description');
    t.same(manifest.input, {
      name: 'input', layout: 'NCHW', channels: 1, height: 28, width: 28, mean: [0.286], std: [0.353],
    });
    t.same(manifest.output, { name: 'logits', kind: 'logits' });
    t.same(manifest.labels, LABELS);
    t.type(manifest.training.seed, 'number');
    t.ok(Number.isInteger(manifest.training.epochs) && manifest.training.epochs > 0, 'epochs is a positive integer');
    t.type(manifest.training.architecture, 'string');
    t.match(manifest.training.architecture, /^784(-\d+)+-10$/);
    t.ok(manifest.training.test_accuracy !== null && manifest.training.test_accuracy >= 0.87 && manifest.training.test_accuracy <= 1,
      `recorded test accuracy ${manifest.training.test_accuracy} is in [0.87, 1]`);

    const session = await ort.InferenceSession.create(join(MODELS, `${id}.onnx`));
    t.teardown(() => session.release());
    t.same(session.inputNames, [manifest.input.name], 'input name matches the manifest');
    t.same(session.outputNames, [manifest.output.name], 'output name matches the manifest');

    t.test('accuracy on the first 1000 test images', async (t) => {
      // A missing data set fails the test: a skip would read as a pass (.ci/run installs it).
      t.ok(haveData, `Fashion-MNIST test set at ${DATA_DIR}`);
      const test = loadSplit('t10k', N);
      // Same preprocessing as the server: pixel/255, then (x - mean) / std.
      const [mean] = manifest.input.mean, [std] = manifest.input.std;
      const x = new Float32Array(N * 784);
      for (let i = 0; i < x.length; i++) x[i] = (test.images[i]! / 255 - mean!) / std!;
      const out = await session.run({ [manifest.input.name]: new ort.Tensor('float32', x, [N, 1, 28, 28]) });
      const logits = out[manifest.output.name]!;
      t.same(logits.dims, [N, manifest.labels.length]);
      const data = logits.data as Float32Array;
      let correct = 0;
      for (let r = 0; r < N; r++) {
        let best = 0;
        for (let j = 1; j < 10; j++) if (data[r * 10 + j]! > data[r * 10 + best]!) best = j;
        if (best === test.labels[r]) correct++;
      }
      const acc = correct / N;
      t.ok(acc >= 0.85, `${id} accuracy on the first ${N} test images is ${acc.toFixed(3)} (>= 0.85)`);
    });
  });
}

t.test('vB is better than vA', async (t) => {
  const a = manifests.vA, b = manifests.vB;
  if (!a || !b) return t.fail('manifests were not loaded');
  t.not(a.training.architecture, b.training.architecture, 'different architectures');
  t.ok(b.training.test_accuracy! > a.training.test_accuracy!,
    `vB ${b.training.test_accuracy} > vA ${a.training.test_accuracy}`);
});
