// A small ONNX image classifier shaped unlike the Fashion-MNIST MLPs, written by the
// tests with fixed (seeded) weights: NHWC, 3 channels, 32x32, its own mean/std, a
// symbolic batch dimension. Conv inside, so that batching is tested on a kernel whose
// batched and single runs could differ, not only on a Gemm.
//
//   input [batch,32,32,3] -> Transpose(0,3,1,2) -> Conv 3->8 k3 s2 p1 -> Relu
//   -> GlobalAveragePool -> Flatten -> Gemm 8->5 -> logits [batch,5]
//
// `failsBatched`: a Reshape to [1, -1] before the Gemm, so that any batch of more than
// one image makes session.run throw while single images work (the retry path).
// `reducesBatch`: the first row only (a Slice, which onnxruntime's metadata still reports
// as [batch,5]): a batch runs without error but gives one row for all its images, which
// only the warm-up run at the largest batch can see.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mulberry32 } from '../../scripts/train/prng.ts';
import { attr, encodeModel, type InitializerDef, type NodeDef } from '../../scripts/train/onnx.ts';

export const FOREIGN = { size: 32, channels: 3, classes: 5, mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3], labels: ['ant', 'bee', 'cat', 'dog', 'eel'] } as const;

/** ONNX element types a test may give the scores output (a Cast after the Gemm). */
const ELEM = { float16: 10, int64: 7 } as const;

// `classesFirst`: the scores transposed ([5, batch]) while the output is declared only as
// ['a', 'b']: the right count of scores, in the wrong order for splitting by image.
// `nanScores`: Sqrt of the logits, NaN for the negative ones.
// `masked`: -Infinity added to the logits of these classes (a masked class).
// `dynamic`: any input size (the Conv and the pooling take any), picked by img_size up to 1024.
// `convHead`: the scores as a convolutional head gives them, [batch, 5, 1, 1].
export function writeForeignModel(opts: { convHead?: boolean; failsBatched?: boolean; reducesBatch?: boolean; classesFirst?: boolean; nanScores?: boolean; masked?: readonly number[]; dynamic?: boolean; outputType?: keyof typeof ELEM; manifest?: Record<string, unknown> } = {}): string {
  const rng = mulberry32(424242);
  const rand = (n: number, scale: number) => Float32Array.from({ length: n }, () => (rng() - 0.5) * 2 * scale);
  const F = 8;
  const initializers: InitializerDef[] = [
    { name: 'conv.w', dims: [F, 3, 3, 3], float32: rand(F * 27, 0.5) },
    { name: 'conv.b', dims: [F], float32: rand(F, 0.1) },
    { name: 'fc.w', dims: [FOREIGN.classes, F], float32: rand(FOREIGN.classes * F, 1) },
    { name: 'fc.b', dims: [FOREIGN.classes], float32: rand(FOREIGN.classes, 0.1) },
  ];
  const nodes: NodeDef[] = [
    { opType: 'Transpose', inputs: ['input'], outputs: ['nchw'], attributes: { perm: attr.ints([0, 3, 1, 2]) } },
    { opType: 'Conv', inputs: ['nchw', 'conv.w', 'conv.b'], outputs: ['conv'], attributes: { kernel_shape: attr.ints([3, 3]), strides: attr.ints([2, 2]), pads: attr.ints([1, 1, 1, 1]) } },
    { opType: 'Relu', inputs: ['conv'], outputs: ['relu'] },
    { opType: 'GlobalAveragePool', inputs: ['relu'], outputs: ['gap'] },
    { opType: 'Flatten', inputs: ['gap'], outputs: ['flat'] },
  ];
  let feat = 'flat';
  if (opts.failsBatched === true) {
    // The 1 is computed (batch / batch), so that onnxruntime's shape inference cannot see it:
    // the output's metadata keeps a batch dimension, as a model that fails at run time would.
    initializers.push({ name: 'zero', dims: [1], int64: [0n] }, { name: 'uno', dims: [1], int64: [1n] }, { name: 'rest', dims: [1], int64: [-1n] });
    nodes.push(
      { opType: 'Shape', inputs: ['flat'], outputs: ['flat.shape'] },
      { opType: 'Slice', inputs: ['flat.shape', 'zero', 'uno', 'zero'], outputs: ['flat.batch'] },
      { opType: 'Div', inputs: ['flat.batch', 'flat.batch'], outputs: ['flat.one'] },
      { opType: 'Concat', inputs: ['flat.one', 'rest'], outputs: ['shape'], attributes: { axis: attr.int(0) } },
      { opType: 'Reshape', inputs: ['flat', 'shape'], outputs: ['one'] },
    );
    feat = 'one';
  }
  if (opts.reducesBatch === true) {
    nodes.push({ opType: 'Gemm', inputs: [feat, 'fc.w', 'fc.b'], outputs: ['rows'], attributes: { transB: attr.int(1) } });
    initializers.push({ name: 'first', dims: [1], int64: [0n] }, { name: 'one', dims: [1], int64: [1n] });
    nodes.push({ opType: 'Slice', inputs: ['rows', 'first', 'one', 'first'], outputs: ['scores'] });
  } else if (opts.outputType !== undefined) {
    nodes.push({ opType: 'Gemm', inputs: [feat, 'fc.w', 'fc.b'], outputs: ['scores32'], attributes: { transB: attr.int(1) } });
    nodes.push({ opType: 'Cast', inputs: ['scores32'], outputs: ['scores'], attributes: { to: attr.int(ELEM[opts.outputType]) } });
  } else if (opts.classesFirst === true || opts.nanScores === true) {
    nodes.push({ opType: 'Gemm', inputs: [feat, 'fc.w', 'fc.b'], outputs: ['rows'], attributes: { transB: attr.int(1) } });
    if (opts.nanScores === true) nodes.push({ opType: 'Sqrt', inputs: ['rows'], outputs: ['scores'] });
    else {
      // Reshaped to its own shape, passed through Abs: onnxruntime's metadata no longer knows the dims.
      nodes.push(
        { opType: 'Transpose', inputs: ['rows'], outputs: ['cols'], attributes: { perm: attr.ints([1, 0]) } },
        { opType: 'Shape', inputs: ['cols'], outputs: ['cols.shape'] },
        { opType: 'Abs', inputs: ['cols.shape'], outputs: ['cols.dims'] },
        { opType: 'Reshape', inputs: ['cols', 'cols.dims'], outputs: ['scores'] },
      );
    }
  } else if (opts.masked !== undefined) {
    initializers.push({ name: 'mask', dims: [FOREIGN.classes], float32: Float32Array.from({ length: FOREIGN.classes }, (_, c) => (opts.masked!.includes(c) ? -Infinity : 0)) });
    nodes.push({ opType: 'Gemm', inputs: [feat, 'fc.w', 'fc.b'], outputs: ['logits'], attributes: { transB: attr.int(1) } });
    nodes.push({ opType: 'Add', inputs: ['logits', 'mask'], outputs: ['scores'] });
  } else if (opts.convHead === true) {
    initializers.push({ name: 'head.shape', dims: [4], int64: [0n, BigInt(FOREIGN.classes), 1n, 1n] });
    nodes.push({ opType: 'Gemm', inputs: [feat, 'fc.w', 'fc.b'], outputs: ['rows'], attributes: { transB: attr.int(1) } });
    nodes.push({ opType: 'Reshape', inputs: ['rows', 'head.shape'], outputs: ['scores'] });
  } else nodes.push({ opType: 'Gemm', inputs: [feat, 'fc.w', 'fc.b'], outputs: ['scores'], attributes: { transB: attr.int(1) } });
  const onnx = encodeModel({
    producerName: 'edge-broker test',
    graph: {
      name: 'foreign',
      nodes,
      initializers,
      inputs: [{ name: 'input', shape: opts.dynamic === true ? ['batch', 'h', 'w', 3] : ['batch', FOREIGN.size, FOREIGN.size, 3] }],
      outputs: [{ name: 'scores', shape: opts.classesFirst === true ? ['a', 'b'] : opts.convHead === true ? ['batch', FOREIGN.classes, 1, 1] : ['batch', FOREIGN.classes], ...(opts.outputType !== undefined ? { elemType: ELEM[opts.outputType] } : {}) }],
    },
  });
  const dir = mkdtempSync(join(tmpdir(), 'eb-foreign-'));
  const path = join(dir, 'foreign.onnx');
  writeFileSync(path, onnx);
  writeFileSync(
    join(dir, 'foreign.json'),
    JSON.stringify({
      name: 'foreign-nhwc',
      version: '0.1.0',
      input: { name: 'input', layout: 'NHWC', channels: 3, mean: FOREIGN.mean, std: FOREIGN.std, ...(opts.dynamic === true ? { height: null, width: null, defaultSize: FOREIGN.size, maxSize: 1024 } : { height: FOREIGN.size, width: FOREIGN.size }) },
      output: { name: 'scores', kind: 'logits' },
      labels: FOREIGN.labels,
      batching: { max_batch_size: 8, preferred_batch_sizes: [4, 8], max_queue_delay_us: 2000 },
      queue: { max_size: 64, timeout_ms: 10_000 },
      ...opts.manifest,
    }),
  );
  return path;
}
