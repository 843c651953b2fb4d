// Does a model's graph take what its manifest says it does? Checked by each worker when
// it loads the model, from the session's input and output metadata, and once more on the
// warm-up run's output. A model that fails is refused with the reason (the start-up log,
// /ready, a promote's answer), instead of answering 500 to every request with the
// runtime's words. Pure: the metadata is passed in, as onnxruntime-node reports it.
import type { ModelManifest } from './manifest.ts';

/** One input or output as onnxruntime-node's session.inputMetadata / outputMetadata gives it. */
export interface GraphValue {
  readonly name: string;
  readonly isTensor: boolean;
  /** The element type, e.g. 'float32'; absent when not a tensor. */
  readonly type?: string;
  /** Numbers for fixed dimensions; a string (symbolic) or a negative number for dynamic ones. */
  readonly shape?: readonly (number | string)[];
}

const fixed = (d: number | string | undefined): d is number => typeof d === 'number' && d > 0;
const names = (list: readonly GraphValue[]): string => list.map((v) => `'${v.name}'`).join(', ') || 'none';

/** Output element types read as scores (float64 and float16 are converted to float32). */
export const SCORE_TYPES: ReadonlySet<string> = new Set(['float32', 'float64', 'float16']);

/** Why the graph does not fit the manifest, or null when it does. */
export function graphProblem(manifest: ModelManifest, inputs: readonly GraphValue[], outputs: readonly GraphValue[]): string | null {
  const { input, output, labels } = manifest;
  const inp = inputs.find((v) => v.name === input.name);
  if (inp === undefined) return `input.name is '${input.name}' but the graph's inputs are ${names(inputs)}`;
  if (!inp.isTensor) return `input '${input.name}' is not a tensor`;
  if (inp.type !== undefined && inp.type !== 'float32') return `input '${input.name}' takes ${inp.type}; the broker feeds float32`;
  const shape = inp.shape;
  if (shape !== undefined) {
    if (shape.length !== 4) return `input '${input.name}' has ${shape.length} dimensions; an image model takes 4 (${input.layout})`;
    const [c, h, w] = input.layout === 'NCHW' ? [shape[1], shape[2], shape[3]] : [shape[3], shape[1], shape[2]];
    const dims = `[${shape.join(', ')}]`;
    if (fixed(c) && c !== input.channels) return `input '${input.name}' is ${dims}: ${c} channels in ${input.layout}, the manifest says ${input.channels} (check input.channels and input.layout)`;
    if (input.height === null) {
      if (fixed(h) || fixed(w)) {
        // A fixed 1 or 3 where the layout puts a side, and sides free where the other layout puts them: the layout is wrong.
        const other = input.layout === 'NCHW' ? [shape[3], shape[1], shape[2]] : [shape[1], shape[2], shape[3]];
        const swapped = other[0] === input.channels && !fixed(other[1]) && !fixed(other[2]);
        return `input '${input.name}' is ${dims}: a fixed size in ${input.layout}, but the manifest's input.height and input.width are null (any size)${swapped ? `; in ${input.layout === 'NCHW' ? 'NHWC' : 'NCHW'} it is ${input.channels} channel${input.channels === 1 ? '' : 's'} of any size: check input.layout` : ''}`;
      }
    } else if ((fixed(h) && h !== input.height) || (fixed(w) && w !== input.width)) {
      return `input '${input.name}' is ${dims}: not ${input.height}x${input.width} in ${input.layout} as the manifest says`;
    }
    const b = shape[0];
    if (manifest.batching.maxBatchSize > 1 && fixed(b)) return `batching.max_batch_size is ${manifest.batching.maxBatchSize} but the input's batch dimension is fixed at ${b}`;
    // The broker sends one image at a time when it does not batch: a graph fixed at N > 1 images cannot take it.
    if (fixed(b) && b !== 1) return `input '${input.name}' is ${dims}: its batch dimension is fixed at ${b}; the broker sends 1 image (or up to batching.max_batch_size with a dynamic batch)`;
  }
  // The broker feeds the image input alone: another input the graph requires would have no value.
  const others = inputs.filter((v) => v.name !== input.name);
  if (others.length > 0) return `the graph has inputs the broker cannot feed besides '${input.name}': ${names(others)} (an image classifier takes one input)`;
  const out = outputs.find((v) => v.name === output.name);
  if (out === undefined) return `output.name is '${output.name}' but the graph's outputs are ${names(outputs)}`;
  if (!out.isTensor) return `output '${output.name}' is not a tensor`;
  if (out.type !== undefined && !SCORE_TYPES.has(out.type)) return `output '${output.name}' is ${out.type}; the broker reads scores as float32, float64 or float16`;
  const os = out.shape;
  if (manifest.batching.maxBatchSize > 1 && os !== undefined && (os.length < 2 || fixed(os[0]))) {
    return `batching.max_batch_size is ${manifest.batching.maxBatchSize} but output '${output.name}' is [${os.join(', ')}]: no batch dimension to split a batch's scores by`;
  }
  // One row of scores per image: [batch, K], or K spread over fixed dimensions ([batch, K, 1, 1]
  // from a convolutional head, [batch, 1, K]), which the workers split by size alike.
  const rest = os === undefined ? [] : os.length > 1 ? os.slice(1) : os;
  if (rest.filter((d) => fixed(d) && d !== 1).length > 1) return `output '${output.name}' is [${os!.join(', ')}]: more than one dimension past the batch is above 1 (several heads?); the broker reads one row of scores per image, [batch, K] or K among dimensions of 1`;
  const classes = rest.length > 0 && rest.every(fixed) ? rest.reduce((a, b) => a * b, 1) : os?.[os.length - 1];
  if (fixed(classes) && classes !== labels.length) return `output '${output.name}' is [${os!.join(', ')}]: ${classes} classes per image but the manifest has ${labels.length} labels`;
  return null;
}

/** The warm-up run's output (dims as run): one row of labels.length scores per image, or why not. */
export function outputProblem(manifest: ModelManifest, dims: readonly number[], batch: number): string | null {
  const total = dims.reduce((a, b) => a * b, 1);
  if (total !== batch * manifest.labels.length) return `output '${manifest.output.name}' came out [${dims.join(', ')}] for ${batch} image(s); the manifest's ${manifest.labels.length} labels need ${batch * manifest.labels.length} scores`;
  // Rows are split by image: the batch must be the first dimension (after any 1s). A classes-first output
  // ([labels, N]) has the right count but would give each image its neighbours' scores.
  if (batch > 1 && dims.find((d) => d !== 1) !== batch) return `output '${manifest.output.name}' came out [${dims.join(', ')}] for ${batch} images; its first dimension must be the batch (one row of ${manifest.labels.length} scores per image)`;
  // Past the batch, one dimension holds the scores: [N, 2, 5] is two heads, not ten classes.
  const past = batch > 1 ? dims.slice(dims.indexOf(batch) + 1) : dims;
  if (past.filter((d) => d !== 1).length > 1) return `output '${manifest.output.name}' came out [${dims.join(', ')}] for ${batch} image(s): more than one dimension past the batch is above 1 (several heads?); the broker reads one row of scores per image`;
  return null;
}
