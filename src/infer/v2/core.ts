// The Open Inference Protocol's semantics, once, for every transport: which arm a model
// name and version reach, readiness, metadata from the sessions and manifests, and
// inference: a request's tensors checked against the model, run through the same
// service as /v1/infer (A/B, sticky, shadow, canary, admission queue, batcher, metrics),
// and the model's output returned as a tensor or as classification strings.
//
// Names and versions (docs/oip.md): the broker serves one v2 model, named after arm A's
// manifest `name` (B's manifest name is accepted as an alias); its versions are the
// manifest versions of A and B. A version reaches the arm(s) carrying it; no version
// follows the A/B policy. After a promote (A = B) the model is B's name and version, and
// the names served before stay aliases.
import { readFileSync } from 'node:fs';
import { BrokerError } from '../../errors.ts';
import { PRIORITY_LEVELS, cappedPriority } from '../admission.ts';
import type { Arm } from '../arms.ts';
import type { ModelManifest } from '../manifest.ts';
import { topK } from '../postprocess.ts';
import { decodeImage } from '../routes.ts';
import type { InferService } from '../service.ts';
import type { InferRequest, InferResponse, InputTensor, MetadataTensor, ModelMetadata, OutputTensor, RequestedOutput, ServerMetadata, CallContext } from './types.ts';

/** What the broker implements of Triton's protocol extensions (GET /v2 lists exactly these). */
export const EXTENSIONS = ['binary_tensor_data', 'classification', 'schedule_policy'] as const;

const PACKAGE = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { name: string; version: string };

/** onnxruntime element types to v2 datatypes. */
const DATATYPES: Record<string, string> = {
  bool: 'BOOL', uint8: 'UINT8', uint16: 'UINT16', uint32: 'UINT32', uint64: 'UINT64',
  int8: 'INT8', int16: 'INT16', int32: 'INT32', int64: 'INT64',
  float16: 'FP16', float32: 'FP32', float64: 'FP64', string: 'BYTES',
};
/** Output types the broker reads as scores, and serves as FP32. */
const FLOATS = new Set(['float16', 'float32', 'float64']);

/** What a model name and version reach. */
interface Target {
  /** The arm the client named through its version; undefined: the A/B policy picks. */
  readonly named: Arm | undefined;
}

export class V2Core {
  /**
   * Every model name this process has served: after a promote (A = B) A's old name still
   * reaches the model, as B's name did before it. Triton and KServe clients name the model in
   * their code; a promote must not be an outage for them. A handful of names at most.
   */
  private readonly served = new Set<string>();

  constructor(private readonly service: InferService | undefined) {
    if (service !== undefined) this.learnNames();
  }

  private learnNames(): void {
    const { A, B } = this.service!.models;
    this.served.add(A.manifest.name).add(B.manifest.name);
  }

  serverMetadata(): ServerMetadata {
    return { name: PACKAGE.name, version: PACKAGE.version, extensions: [...EXTENSIONS] };
  }

  /** The process answers: live. */
  live(): boolean {
    return true;
  }

  /** Every inference worker loaded and warmed its models (false with inference turned off). */
  ready(): boolean {
    return this.service?.ready ?? false;
  }

  /** Throws model_not_found for a name or version the broker does not serve. */
  modelReady(name: string, version: string | undefined): boolean {
    const { named } = this.resolve(name, version);
    // A version that names an arm is ready when that arm's model runs (B may be refused while A serves).
    if (named !== undefined && this.service?.modelProblems[named] !== undefined) return false;
    return this.ready();
  }

  async modelMetadata(name: string, version: string | undefined): Promise<ModelMetadata> {
    const { named } = this.resolve(name, version);
    const service = this.service!;
    const models = service.models;
    const arm = named ?? 'A';
    const manifest = models[arm].manifest;
    if (!service.ready) throw new BrokerError('not_ready', 'inference workers are still loading the models');
    const sessions = (await service.currentPool.metadata())[arm];
    if (sessions === undefined) {
      // A model onnxruntime could not load has no session to describe: it is unavailable, as its requests are.
      const problem = service.modelProblems[arm];
      throw problem !== undefined ? new BrokerError('model_unavailable', problem) : new BrokerError('internal', `no session metadata for arm ${arm}`);
    }
    const tensor = (t: { name: string; type: string; shape: readonly number[] }): MetadataTensor => ({ name: t.name, datatype: DATATYPES[t.type] ?? t.type.toUpperCase(), shape: t.shape });
    return {
      name,
      versions: versionsOf(models.A.manifest, models.B.manifest),
      platform: 'onnxruntime_onnx',
      inputs: sessions.inputs.map(tensor),
      // The manifest's output only: the one the broker serves (a request naming another is a
      // 400), as FP32 whatever the graph's float type (postprocess.ts asFloat32). A client
      // that asks for every output the metadata lists then gets them. An output of another
      // type (a model refused for it) keeps its own: FP32 would describe a model that is not there.
      outputs: sessions.outputs.filter((t) => t.name === manifest.output.name).map((t) => ({ ...tensor(t), ...(FLOATS.has(t.type) ? { datatype: 'FP32' } : {}) })),
    };
  }

  /**
   * Triton's model configuration (its `config` extension), as perf_analyzer and tritonclient's
   * get_model_config read it: the batch limit, the input's dims past the batch in the model's
   * layout (-1 for a dynamic size), the output's, and the dynamic batching settings.
   */
  async modelConfig(name: string, version: string | undefined): Promise<Record<string, unknown>> {
    const { named } = this.resolve(name, version);
    const service = this.service!;
    const arm = named ?? 'A';
    const m = service.models[arm].manifest;
    if (!service.ready) throw new BrokerError('not_ready', 'inference workers are still loading the models');
    // A model that failed its check is described by none of this (its requests say so too; its metadata describes the graph as it is).
    const problem = service.modelProblems[arm];
    if (problem !== undefined) throw new BrokerError('model_unavailable', problem);
    const { channels: c, layout } = m.input;
    const h = m.input.height ?? -1;
    const w = m.input.width ?? -1;
    const b = m.batching;
    return {
      name,
      platform: 'onnxruntime_onnx',
      backend: 'onnxruntime',
      version_policy: { specific: { versions: versionsOf(service.models.A.manifest, service.models.B.manifest) } },
      max_batch_size: b.maxBatchSize,
      input: [{ name: m.input.name, data_type: 'TYPE_FP32', format: layout === 'NCHW' ? 'FORMAT_NCHW' : 'FORMAT_NHWC', dims: layout === 'NCHW' ? [c, h, w] : [h, w, c] }],
      output: [{ name: m.output.name, data_type: 'TYPE_FP32', dims: await this.outputDims(arm, m.output.name, m.labels.length) }],
      ...(b.maxBatchSize > 1 ? { dynamic_batching: { preferred_batch_size: [...b.preferredBatchSizes], max_queue_delay_microseconds: b.maxQueueDelayUs } } : {}),
    };
  }

  /**
   * The output's dims past the batch, as the metadata gives them: a convolutional head's
   * [batch,10,1,1] is answered [N,10,1,1], not [N,10]. [classes] when the graph's dims are
   * not all known or do not hold the scores (the metadata is one cached task per pool).
   */
  private async outputDims(arm: Arm, output: string, classes: number): Promise<number[]> {
    const sessions = await this.service!.currentPool.metadata().then(
      (m) => m[arm],
      () => undefined,
    );
    const rest = sessions?.outputs.find((t) => t.name === output)?.shape.slice(1);
    if (rest === undefined || rest.length <= 1 || !rest.every((d) => Number.isInteger(d) && d >= 1)) return [classes];
    return rest.reduce((a, b) => a * b, 1) === classes ? [...rest] : [classes];
  }

  async infer(name: string, version: string | undefined, req: InferRequest, ctx: CallContext = {}): Promise<InferResponse> {
    const { named } = this.resolve(name, version);
    const service = this.service!;
    if (!service.ready) throw new BrokerError('not_ready', 'inference workers are still loading the models');
    const priority = cappedPriority(schedulePriority(req.parameters['priority']) ?? ctx.headerPriority, ctx.priorityCeiling);
    const timeoutMs = scheduleTimeout(req.parameters['timeout']);

    let choice = service.choose(ctx.cookieArm, named);
    // No version, and A and B take different inputs (a split between two models: another
    // input name, or FP32 of another shape): the unversioned metadata describes A, so a
    // request the split sent to the arm it does not fit goes to the one it fits, pinned as if
    // it named its version (no cookie, no shadow), unless the split gives that arm no traffic.
    const other: Arm = choice.arm === 'A' ? 'B' : 'A';
    const only = req.inputs.length === 1 ? req.inputs[0] : undefined;
    // Fitting neither, a request with the other arm's input name (and not this one's) is told what that arm takes,
    // not that the model it just read the metadata of has no such input.
    const otherManifest = service.models[other].manifest;
    const forOther = (i: InputTensor): boolean => takes(otherManifest, i) || (i.name === otherManifest.input.name && i.name !== choice.model.manifest.input.name);
    if (named === undefined && only !== undefined && !takes(choice.model.manifest, only) && forOther(only) && service.takesTraffic(other)) {
      choice = service.choose(undefined, other);
    }
    const manifest = choice.model.manifest;
    if (req.inputs.length !== 1) throw bad(`model ${name} takes one input, ${manifest.input.name}; the request has ${req.inputs.length}`);
    const input = req.inputs[0]!;
    if (input.name !== manifest.input.name) throw bad(`model ${name} has no input ${input.name}; its input is ${manifest.input.name}`);
    const wanted = outputsOf(req.outputs, manifest);
    // A classification count out of range is the request's fault: said before any image runs
    // (and counts as served), not after.
    for (const o of wanted) classificationOf(o, manifest.labels.length);
    const items = input.datatype === 'BYTES' ? imageItems(input) : input.datatype === 'FP32' ? tensorItems(input, manifest) : undefined;
    if (items === undefined) throw bad(`input ${input.name} has datatype ${input.datatype}; the model takes FP32 ${shapeText(manifest)} or BYTES [N] encoded images`);

    const json = ctx.jsonFloats;
    const asJson = json !== undefined && wanted.some((o) => classificationOf(o, manifest.labels.length) === undefined && !wantsBinary(o, json.binaryByDefault));
    // A classification ranks the values: NaN has no rank (it came first, or was dropped).
    const ranks = wanted.some((o) => classificationOf(o, manifest.labels.length) !== undefined);
    const check = asJson || ranks ? (rs: readonly { scores?: Float32Array | undefined }[]) => finiteOutput(rs, manifest.output.name, asJson) : undefined;
    const { results } = await service.run(choice, { items: items.buffers, tensor: input.datatype === 'FP32', size: items.size, topK: 0, scores: true, priority, timeoutMs, signal: ctx.signal, check });
    const n = results.length;
    const classes = results[0]!.scores!.length;
    const dims = await this.outputDims(choice.arm, manifest.output.name, classes);
    const outputs: OutputTensor[] = wanted.map((o) => {
      const k = classificationOf(o, classes);
      if (k === undefined) {
        const data = new Float32Array(n * classes);
        results.forEach((r, i) => data.set(r.scores!, i * classes));
        return { name: manifest.output.name, datatype: 'FP32', shape: [n, ...dims], data, requested: o };
      }
      // Triton's classification: the output's own values (not probabilities), best first.
      const data = results.flatMap((r) => topK(r.scores!, manifest.labels, k, false).map((p) => `${p.score}:${p.index}:${p.label}`));
      return { name: manifest.output.name, datatype: 'BYTES', shape: [n, k], data, requested: o };
    });
    // The slowest item stands for the request, as on /v1/infer.
    const worst = results.reduce((a, r) => (r.queueMs + r.decodeMs + r.inferMs > a.queueMs + a.decodeMs + a.inferMs ? r : a));
    const us = (ms: number) => Math.max(0, Math.round(ms * 1000));
    return {
      model_name: name,
      model_version: manifest.version,
      ...(req.id !== undefined ? { id: req.id } : {}),
      outputs,
      parameters: { queue_us: us(worst.queueMs), decode_us: us(worst.decodeMs), infer_us: us(worst.inferMs), batch_size: worst.batchSize },
      arm: choice.arm,
      named: choice.reason === 'version',
    };
  }

  /** Throws as a request to an unknown model or version would: checked before its body, as Triton does (404, not the body's 400). */
  checkModel(name: string, version: string | undefined): void {
    // Inference off: the body is still checked first (a bad one is the client's 400 on any broker).
    if (this.service !== undefined) this.resolve(name, version);
  }

  private resolve(name: string, version: string | undefined): Target {
    if (this.service === undefined) throw new BrokerError('inference_disabled', 'inference is turned off on this broker (INFER_ENABLED=false)');
    this.learnNames();
    const { A, B } = this.service.models;
    if (!this.served.has(name)) throw new BrokerError('model_not_found', `model ${name} is not served; the model is ${A.manifest.name}`);
    if (version === undefined) return { named: undefined };
    const arms = (['A', 'B'] as const).filter((arm) => this.service!.models[arm].manifest.version === version);
    if (arms.length === 0) throw new BrokerError('model_not_found', `model ${name} has no version ${version}; versions: ${versionsOf(A.manifest, B.manifest).join(', ')}`);
    // Both arms carry this version (after a promote, say): it is one model, the policy picks.
    return { named: arms.length === 1 ? arms[0] : undefined };
  }
}

function versionsOf(a: ModelManifest, b: ModelManifest): string[] {
  return a.version === b.version ? [a.version] : [a.version, b.version];
}

function bad(message: string): BrokerError {
  return new BrokerError('invalid_request', message);
}

function shapeText(m: ModelManifest): string {
  const { channels: c, height, width, layout } = m.input;
  const h = height ?? 'S';
  const w = width ?? 'S';
  return layout === 'NCHW' ? `[N,${c},${h},${w}]` : `[N,${h},${w},${c}]`;
}

/** Triton's priority: 0 or absent is the model's default, 1 the highest, larger is lower. Ours: 0-9, higher first. */
function schedulePriority(value: unknown): number | undefined {
  if (value === undefined || value === null || value === 0) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > PRIORITY_LEVELS) {
    throw bad(`parameters.priority must be an integer from 0 (default) to ${PRIORITY_LEVELS} (1 is the highest)`);
  }
  return PRIORITY_LEVELS - value;
}

/** Microseconds; 0 or absent: the model's queue.timeout_ms. */
function scheduleTimeout(value: unknown): number | undefined {
  if (value === undefined || value === null || value === 0) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) throw bad('parameters.timeout must be a non-negative integer (microseconds)');
  return value / 1000;
}

function outputsOf(requested: readonly RequestedOutput[] | undefined, manifest: ModelManifest): (RequestedOutput | undefined)[] {
  if (requested === undefined || requested.length === 0) return [undefined];
  for (const o of requested) {
    if (o.name !== manifest.output.name) throw bad(`model ${manifest.name} serves output ${manifest.output.name}, not ${o.name}`);
  }
  // Asked for twice (plain, then as classification): one would be dropped without a word.
  if (requested.length > 1) throw bad(`outputs names ${manifest.output.name} more than once: each output may be asked for once`);
  return [...requested];
}

/** An output leaves as binary when it asks (`binary_data`), else as the request does (`binary_data_output`). */
export function wantsBinary(o: RequestedOutput | undefined, binaryByDefault: boolean): boolean {
  const asked = o?.parameters['binary_data'];
  if (asked === undefined || asked === null) return binaryByDefault;
  if (typeof asked !== 'boolean') throw bad(`parameters.binary_data of output ${o!.name} must be true or false`);
  return asked;
}

/**
 * JSON has no NaN or Infinity (JSON.stringify writes null): such an output leaves as binary
 * only. A classification cannot rank NaN either (`asJson` false: only NaN is refused).
 */
function finiteOutput(results: readonly { scores?: Float32Array | undefined }[], output: string, asJson: boolean): void {
  for (const r of results) {
    if (r.scores === undefined) continue;
    if (!asJson) {
      if (r.scores.some(Number.isNaN)) throw new BrokerError('internal', `output ${output} holds NaN values, which a classification cannot rank`);
      continue;
    }
    if (!r.scores.every(Number.isFinite)) {
      throw new BrokerError('internal', `output ${output} holds values that are not finite (NaN or ±Infinity), which JSON cannot carry: ask for it as binary (parameters.binary_data_output: true)`);
    }
  }
}

function classificationOf(o: RequestedOutput | undefined, classes: number): number | undefined {
  const k = o?.parameters['classification'];
  if (k === undefined || k === null) return undefined;
  if (typeof k !== 'number' || !Number.isInteger(k) || k < 1 || k > classes) throw bad(`parameters.classification of output ${o!.name} must be an integer from 1 to ${classes}`);
  return k;
}

/** BYTES [N] (or [N,1]): N encoded images, decoded and preprocessed as on /v1/infer. */
function imageItems(input: InputTensor): { buffers: Buffer[]; size: undefined } {
  const { shape, name } = input;
  if (!(shape.length === 1 || (shape.length === 2 && shape[1] === 1)) || !(shape[0]! >= 1)) throw bad(`BYTES input ${name} must have shape [N] or [N,1] with N >= 1, got [${shape.join(',')}]`);
  const n = shape[0]!;
  let buffers: Buffer[];
  const d = input.data;
  if (d.kind === 'elements') buffers = [...d.elements];
  else if (d.kind === 'raw') buffers = splitBytes(d.bytes, name);
  else {
    const values = Array.isArray(d.values) ? d.values.flat(2) : undefined;
    if (values === undefined || !values.every((v) => typeof v === 'string')) throw bad(`BYTES input ${name}: data must be an array of base64 strings (one encoded image each)`);
    buffers = (values as string[]).map((v, i) => {
      try {
        return decodeImage(v);
      } catch {
        throw new BrokerError('invalid_image', `BYTES input ${name}, element ${i}: not valid base64`);
      }
    });
  }
  if (buffers.length !== n) throw bad(`BYTES input ${name} has shape [${shape.join(',')}] but ${buffers.length} elements`);
  buffers.forEach((b, i) => {
    if (b.length === 0) throw new BrokerError('invalid_image', `BYTES input ${name}, element ${i}: empty`);
  });
  return { buffers, size: undefined };
}

/** Triton's BYTES serialisation: each element a 4-byte little-endian length, then its bytes. */
export function splitBytes(raw: Buffer, name: string): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < raw.length; ) {
    if (off + 4 > raw.length) throw bad(`BYTES input ${name}: truncated element length at byte ${off}`);
    const len = raw.readUInt32LE(off);
    off += 4;
    if (off + len > raw.length) throw bad(`BYTES input ${name}: element of ${len} bytes runs past the data`);
    out.push(raw.subarray(off, off + len));
    off += len;
  }
  return out;
}

/** An FP32 shape's [N, H, W, C] in the model's layout, when it is 4 positive integers and fits the model's input; else undefined. */
function tensorDims(shape: readonly number[], manifest: ModelManifest): [number, number, number, number] | undefined {
  const { channels: c, height, width, layout, minSize, maxSize } = manifest.input;
  if (shape.length !== 4 || !shape.every((d) => Number.isInteger(d) && d >= 1)) return undefined;
  const [n, h, w, ch] = layout === 'NCHW' ? [shape[0]!, shape[2]!, shape[3]!, shape[1]!] : [shape[0]!, shape[1]!, shape[2]!, shape[3]!];
  const fits = ch === c && (height !== null ? h === height && w === width : h === w && h >= minSize && h <= maxSize);
  return fits ? [n, h, w, ch] : undefined;
}

/** Whether the model takes this input: its name, and for FP32 its shape (images fit any model). */
function takes(manifest: ModelManifest, input: InputTensor): boolean {
  return input.name === manifest.input.name && (input.datatype !== 'FP32' || tensorDims(input.shape, manifest) !== undefined);
}

/** FP32 in the model's own layout: each item's values as one buffer, after the shape is checked. */
function tensorItems(input: InputTensor, manifest: ModelManifest): { buffers: Buffer[]; size: number | undefined } {
  const { shape, name } = input;
  const { channels: c, height, minSize, maxSize } = manifest.input;
  const dims = tensorDims(shape, manifest);
  const [n, h, w] = dims ?? [0, 0, 0];
  if (dims === undefined) throw bad(`FP32 input ${name} must have shape ${shapeText(manifest)}${height === null ? ` with S from ${minSize} to ${maxSize}` : ''}, got [${shape.join(',')}]`);
  const per = c * h * w;
  const total = n * per;
  const buffers: Buffer[] = [];
  const d = input.data;
  if (d.kind === 'raw') {
    if (d.bytes.length !== total * 4) throw bad(`FP32 input ${name} of shape [${shape.join(',')}] needs ${total * 4} bytes, got ${d.bytes.length}`);
    // Copied once into ArrayBuffers of their own: aligned for Float32Array, and transferred
    // to a worker as they are (Buffer.from(buffer) would land small ones in Node's shared pool).
    const base = d.bytes.byteOffset;
    for (let i = 0; i < n; i++) {
      const item = d.bytes.buffer.slice(base + i * per * 4, base + (i + 1) * per * 4) as ArrayBuffer;
      const at = firstNonFinite(new Float32Array(item));
      if (at >= 0) throw notFinite(name, i * per + at);
      buffers.push(Buffer.from(item));
    }
  } else if (d.kind === 'json') {
    const values = Array.isArray(d.values) ? (d.values as unknown[]).flat(4) : [];
    if (values.length !== total) throw bad(`FP32 input ${name} of shape [${shape.join(',')}] needs ${total} values, got ${values.length}`);
    for (let i = 0; i < n; i++) {
      const item = new Float32Array(per);
      for (let j = 0; j < per; j++) {
        const v = values[i * per + j];
        if (typeof v !== 'number') throw bad(`FP32 input ${name}: value ${i * per + j} is not a number`);
        item[j] = v;
        // Checked as float32: 1e39 is finite in JSON and Infinity in the tensor.
        if (!Number.isFinite(item[j]!)) throw notFinite(name, i * per + j);
      }
      buffers.push(Buffer.from(item.buffer));
    }
  } else throw bad(`FP32 input ${name}: no numeric contents`);
  return { buffers, size: height === null ? h : undefined };
}

/** The index of the first NaN or ±Infinity, -1 when every value is finite. */
function firstNonFinite(values: Float32Array): number {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i]!)) return i;
  return -1;
}

/** A model given NaN or Infinity answers NaN, which no client can use (and JSON cannot carry). */
function notFinite(name: string, index: number): BrokerError {
  return bad(`FP32 input ${name}: the value at index ${index} is not finite (NaN or ±Infinity, or beyond float32's range)`);
}
