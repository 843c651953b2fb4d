// `npm run make-load-model`: writes two load models with fixed pseudo-random
// weights, for benchmarks only; their predictions are meaningless. models/load/
// is gitignored: run this before a benchmark that needs it.
//
// models/load/heavy.onnx + heavy.json: a convolutional classifier, much heavier
// per request than the Fashion-MNIST MLPs (224x224x3 input, ~35M multiply-adds
// per image), where decoding the JPEG costs about 5x the compute.
//
//   input [batch,3,224,224]
//   Conv 3->16  k3 s2 p1 + Relu   -> [batch,16,112,112]
//   Conv 16->32 k3 s2 p1 + Relu   -> [batch,32,56,56]
//   Conv 32->64 k3 s2 p1 + Relu   -> [batch,64,28,28]
//   GlobalAveragePool + Flatten   -> [batch,64]
//   Gemm 64->1000 (transB=1)      -> logits [batch,1000]

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { mulberry32, normalSampler } from './train/prng.ts';
import { attr, encodeModel, type InitializerDef, type NodeDef } from './train/onnx.ts';
import { formatManifest, type ModelManifest } from './train/manifest.ts';

const SEED = 1337;
const SIZE = 224;
const CLASSES = 1000;
const CHANNELS = [3, 16, 32, 64];
const OUT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'models', 'load');

const rng = mulberry32(SEED);
const normal = normalSampler(rng);
function heNormal(count: number, fanIn: number): Float32Array {
  const a = new Float32Array(count);
  const std = Math.sqrt(2 / fanIn);
  for (let i = 0; i < count; i++) a[i] = normal() * std;
  return a;
}
function smallBias(count: number): Float32Array {
  const a = new Float32Array(count);
  for (let i = 0; i < count; i++) a[i] = (rng() - 0.5) * 0.1;
  return a;
}

const nodes: NodeDef[] = [];
const initializers: InitializerDef[] = [];
let cur = 'input';
for (let i = 0; i + 1 < CHANNELS.length; i++) {
  const cin = CHANNELS[i]!, cout = CHANNELS[i + 1]!;
  const w = `conv${i + 1}.weight`, b = `conv${i + 1}.bias`;
  initializers.push({ name: w, dims: [cout, cin, 3, 3], float32: heNormal(cout * cin * 9, cin * 9) });
  initializers.push({ name: b, dims: [cout], float32: smallBias(cout) });
  nodes.push({
    opType: 'Conv', name: `conv${i + 1}`, inputs: [cur, w, b], outputs: [`conv${i + 1}`],
    attributes: { kernel_shape: attr.ints([3, 3]), strides: attr.ints([2, 2]), pads: attr.ints([1, 1, 1, 1]) },
  });
  nodes.push({ opType: 'Relu', name: `relu${i + 1}`, inputs: [`conv${i + 1}`], outputs: [`relu${i + 1}`] });
  cur = `relu${i + 1}`;
}
const feat = CHANNELS[CHANNELS.length - 1]!;
nodes.push({ opType: 'GlobalAveragePool', name: 'gap', inputs: [cur], outputs: ['gap'] });
nodes.push({ opType: 'Flatten', name: 'flatten', inputs: ['gap'], outputs: ['flat'], attributes: { axis: attr.int(1) } });
initializers.push({ name: 'fc.weight', dims: [CLASSES, feat], float32: heNormal(CLASSES * feat, feat) });
initializers.push({ name: 'fc.bias', dims: [CLASSES], float32: new Float32Array(CLASSES) });
nodes.push({
  opType: 'Gemm', name: 'fc', inputs: ['flat', 'fc.weight', 'fc.bias'], outputs: ['logits'],
  attributes: { alpha: attr.float(1), beta: attr.float(1), transB: attr.int(1) },
});

const architecture = 'conv3x3s2(3-16-32-64)+relu-gap-fc1000';
const description = 'LOAD MODEL for benchmarks only: random (seeded) weights, predictions are meaningless. 224x224 RGB conv net, ~35M MACs per image.';
const onnx = encodeModel({
  producerName: 'edge-broker scripts/make-load-model',
  producerVersion: '1.0.0',
  docString: description,
  graph: {
    name: 'load-heavy',
    nodes,
    initializers,
    inputs: [{ name: 'input', shape: ['batch', 3, SIZE, SIZE] }],
    outputs: [{ name: 'logits', shape: ['batch', CLASSES] }],
  },
  metadata: { purpose: 'load-test', seed: String(SEED) },
});

const manifest: ModelManifest = {
  name: 'load-heavy',
  version: '0.0.1',
  description,
  input: {
    name: 'input', layout: 'NCHW', channels: 3, height: SIZE, width: SIZE,
    mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225],
  },
  output: { name: 'logits', kind: 'logits' },
  labels: Array.from({ length: CLASSES }, (_, i) => `class_${i}`),
  // The batch dimension is symbolic ('batch' above); settings measured with bench:infer.
  batching: { max_batch_size: 8, preferred_batch_sizes: [], max_queue_delay_us: 0 },
  queue: { max_size: null, timeout_ms: 10_000 },
  training: { seed: SEED, epochs: 0, test_accuracy: null, architecture },
};

mkdirSync(OUT_DIR, { recursive: true });
const onnxPath = join(OUT_DIR, 'heavy.onnx');
writeFileSync(onnxPath, onnx);
writeFileSync(join(OUT_DIR, 'heavy.json'), formatManifest(manifest));

// Check it loads and runs in ONNX Runtime.
const session = await ort.InferenceSession.create(onnxPath);
if (session.inputNames.join() !== 'input' || session.outputNames.join() !== 'logits') {
  throw new Error(`unexpected names ${session.inputNames} -> ${session.outputNames}`);
}
const batch = 2;
const x = new Float32Array(batch * 3 * SIZE * SIZE);
for (let i = 0; i < x.length; i++) x[i] = normal();
const t0 = performance.now();
const { logits } = await session.run({ input: new ort.Tensor('float32', x, [batch, 3, SIZE, SIZE]) });
const ms = performance.now() - t0;
if (!logits || logits.dims.join(',') !== `${batch},${CLASSES}`) throw new Error(`unexpected output dims ${logits?.dims}`);
const data = logits.data as Float32Array;
if (!data.every(Number.isFinite)) throw new Error('non-finite logits');
let lo = Infinity, hi = -Infinity;
for (const v of data) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
if (!(hi > lo)) throw new Error('constant logits');
await session.release();
console.log(`wrote ${onnxPath} (${onnx.length} bytes) and heavy.json; ONNX Runtime ran a batch of ${batch} in ${ms.toFixed(1)} ms, logits in [${lo.toFixed(3)}, ${hi.toFixed(3)}]`);

// models/load/wide.onnx + wide.json: an MLP 784-2048-2048-10 on the 28x28 gray
// Fashion-MNIST input. Its 5.8M weights (23 MB) do not fit in any cache, so at batch
// size 1 every image streams all of them from memory (a matrix-vector product, about
// 1 ms of CPU), while a batch of 8 shares one pass (0.2 ms per image): the model on
// which dynamic batching pays on a CPU, as a bench case next to heavy, on which it
// cannot (docs/benchmarks.md).
const WIDE = [784, 2048, 2048, 10];
const wideNodes: NodeDef[] = [{ opType: 'Flatten', name: 'flatten', inputs: ['input'], outputs: ['x0'], attributes: { axis: attr.int(1) } }];
const wideInits: InitializerDef[] = [];
for (let i = 0; i + 1 < WIDE.length; i++) {
  const fanIn = WIDE[i]!, out = WIDE[i + 1]!;
  const last = i + 2 === WIDE.length;
  wideInits.push({ name: `fc${i + 1}.weight`, dims: [out, fanIn], float32: heNormal(out * fanIn, fanIn) });
  wideInits.push({ name: `fc${i + 1}.bias`, dims: [out], float32: smallBias(out) });
  wideNodes.push({
    opType: 'Gemm', name: `fc${i + 1}`, inputs: [`x${i}`, `fc${i + 1}.weight`, `fc${i + 1}.bias`], outputs: [last ? 'logits' : `fc${i + 1}`],
    attributes: { alpha: attr.float(1), beta: attr.float(1), transB: attr.int(1) },
  });
  if (!last) wideNodes.push({ opType: 'Relu', name: `relu${i + 1}`, inputs: [`fc${i + 1}`], outputs: [`x${i + 1}`] });
}
const wideDescription = 'LOAD MODEL for benchmarks only: random (seeded) weights, predictions are meaningless. 28x28 gray MLP 784-2048-2048-10, 5.8M weights (23 MB): memory-bound at batch size 1.';
const wideOnnx = encodeModel({
  producerName: 'edge-broker scripts/make-load-model',
  producerVersion: '1.0.0',
  docString: wideDescription,
  graph: {
    name: 'load-wide',
    nodes: wideNodes,
    initializers: wideInits,
    inputs: [{ name: 'input', shape: ['batch', 1, 28, 28] }],
    outputs: [{ name: 'logits', shape: ['batch', 10] }],
  },
  metadata: { purpose: 'load-test', seed: String(SEED) },
});
const wideManifest: ModelManifest = {
  name: 'load-wide',
  version: '0.0.1',
  description: wideDescription,
  input: { name: 'input', layout: 'NCHW', channels: 1, height: 28, width: 28, mean: [0.286], std: [0.353] },
  output: { name: 'logits', kind: 'logits' },
  labels: Array.from({ length: 10 }, (_, i) => `class_${i}`),
  batching: { max_batch_size: 16, preferred_batch_sizes: [], max_queue_delay_us: 0 },
  queue: { max_size: null, timeout_ms: 10_000 },
  training: { seed: SEED, epochs: 0, test_accuracy: null, architecture: WIDE.join('-') },
};
const widePath = join(OUT_DIR, 'wide.onnx');
writeFileSync(widePath, wideOnnx);
writeFileSync(join(OUT_DIR, 'wide.json'), formatManifest(wideManifest));
const wide = await ort.InferenceSession.create(widePath);
const wx = new Float32Array(2 * 784).map(() => normal());
const { logits: wl } = await wide.run({ input: new ort.Tensor('float32', wx, [2, 1, 28, 28]) });
if (!wl || wl.dims.join(',') !== '2,10' || !(wl.data as Float32Array).every(Number.isFinite)) throw new Error(`wide: unexpected output ${wl?.dims}`);
await wide.release();
console.log(`wrote ${widePath} (${wideOnnx.length} bytes) and wide.json`);
