// A minimal hand-written protobuf encoder and just enough of onnx.proto to
// write inference graphs: ModelProto, GraphProto, NodeProto, AttributeProto,
// TensorProto (float raw_data / int64), ValueInfoProto.
//
// Field numbers are from onnx/onnx.proto (IR version 8). onnx.proto is proto2,
// so repeated scalars are written unpacked (one tag per element).

// ---------------------------------------------------------------------------
// Protobuf wire format

const WIRE_VARINT = 0;
const WIRE_FIXED32 = 5;
const WIRE_LEN = 2;

export class PbWriter {
  private chunks: Uint8Array[] = [];
  private size = 0;

  private push(bytes: Uint8Array): void {
    this.chunks.push(bytes);
    this.size += bytes.length;
  }

  private rawVarint(value: bigint): void {
    // int64 fields encode negatives as their 64-bit two's complement (10 bytes).
    let v = BigInt.asUintN(64, value);
    const out: number[] = [];
    while (v >= 0x80n) {
      out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    out.push(Number(v));
    this.push(Uint8Array.from(out));
  }

  private tag(field: number, wire: number): void {
    this.rawVarint(BigInt((field << 3) | wire));
  }

  /** int32 / int64 / enum / bool field. */
  varint(field: number, value: number | bigint): this {
    this.tag(field, WIRE_VARINT);
    this.rawVarint(BigInt(value));
    return this;
  }

  float(field: number, value: number): this {
    this.tag(field, WIRE_FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.push(b);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.tag(field, WIRE_LEN);
    this.rawVarint(BigInt(value.length));
    this.push(value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, value: PbWriter): this {
    return this.bytes(field, value.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------
// ONNX messages

/** TensorProto.DataType */
export const DataType = { FLOAT: 1, INT64: 7 } as const;

/** AttributeProto.AttributeType */
const AttrType = { FLOAT: 1, INT: 2, STRING: 3, FLOATS: 6, INTS: 7 } as const;

export type AttrValue =
  | { kind: 'int'; value: number }
  | { kind: 'float'; value: number }
  | { kind: 'string'; value: string }
  | { kind: 'ints'; value: number[] }
  | { kind: 'floats'; value: number[] };

export const attr = {
  int: (value: number): AttrValue => ({ kind: 'int', value }),
  float: (value: number): AttrValue => ({ kind: 'float', value }),
  string: (value: string): AttrValue => ({ kind: 'string', value }),
  ints: (value: number[]): AttrValue => ({ kind: 'ints', value }),
  floats: (value: number[]): AttrValue => ({ kind: 'floats', value }),
};

export interface NodeDef {
  opType: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  attributes?: Record<string, AttrValue>;
}

export type Dim = number | string; // number = dim_value, string = dim_param

export interface ValueInfoDef {
  name: string;
  elemType?: number; // default FLOAT
  shape: Dim[];
}

export type InitializerDef =
  | { name: string; dims: number[]; float32: Float32Array }
  | { name: string; dims: number[]; int64: bigint[] };

export interface GraphDef {
  name: string;
  nodes: NodeDef[];
  initializers: InitializerDef[];
  inputs: ValueInfoDef[];
  outputs: ValueInfoDef[];
  docString?: string;
}

export interface ModelDef {
  graph: GraphDef;
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  modelVersion?: number;
  metadata?: Record<string, string>;
  irVersion?: number; // default 8
  opset?: number; // default 17
}

function encodeAttribute(name: string, a: AttrValue): PbWriter {
  // AttributeProto: name=1, f=2, i=3, s=4, floats=7, ints=8, type=20
  const w = new PbWriter().string(1, name);
  switch (a.kind) {
    case 'float': w.float(2, a.value).varint(20, AttrType.FLOAT); break;
    case 'int': w.varint(3, a.value).varint(20, AttrType.INT); break;
    case 'string': w.string(4, a.value).varint(20, AttrType.STRING); break;
    case 'floats': for (const v of a.value) w.float(7, v); w.varint(20, AttrType.FLOATS); break;
    case 'ints': for (const v of a.value) w.varint(8, v); w.varint(20, AttrType.INTS); break;
  }
  return w;
}

function encodeNode(n: NodeDef): PbWriter {
  // NodeProto: input=1, output=2, name=3, op_type=4, attribute=5
  const w = new PbWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  if (n.name) w.string(3, n.name);
  w.string(4, n.opType);
  for (const [k, v] of Object.entries(n.attributes ?? {})) w.message(5, encodeAttribute(k, v));
  return w;
}

function encodeTensor(t: InitializerDef): PbWriter {
  // TensorProto: dims=1, data_type=2, int64_data=7, name=8, raw_data=9
  const w = new PbWriter();
  for (const d of t.dims) w.varint(1, d);
  const count = t.dims.reduce((a, b) => a * b, 1);
  if ('float32' in t) {
    if (t.float32.length !== count) throw new Error(`${t.name}: ${t.float32.length} values for dims ${t.dims}`);
    w.varint(2, DataType.FLOAT).string(8, t.name);
    // raw_data is little-endian; copy so a subarray view is not an issue.
    const raw = new Uint8Array(count * 4);
    const dv = new DataView(raw.buffer);
    for (let i = 0; i < count; i++) dv.setFloat32(i * 4, t.float32[i]!, true);
    w.bytes(9, raw);
  } else {
    if (t.int64.length !== count) throw new Error(`${t.name}: ${t.int64.length} values for dims ${t.dims}`);
    w.varint(2, DataType.INT64);
    for (const v of t.int64) w.varint(7, v);
    w.string(8, t.name);
  }
  return w;
}

function encodeValueInfo(v: ValueInfoDef): PbWriter {
  // ValueInfoProto: name=1, type=2
  // TypeProto: tensor_type=1; TypeProto.Tensor: elem_type=1, shape=2
  // TensorShapeProto: dim=1; Dimension: dim_value=1, dim_param=2
  const shape = new PbWriter();
  for (const d of v.shape) {
    const dim = new PbWriter();
    if (typeof d === 'number') dim.varint(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new PbWriter().varint(1, v.elemType ?? DataType.FLOAT).message(2, shape);
  const type = new PbWriter().message(1, tensorType);
  return new PbWriter().string(1, v.name).message(2, type);
}

function encodeGraph(g: GraphDef): PbWriter {
  // GraphProto: node=1, name=2, initializer=5, doc_string=10, input=11, output=12
  const w = new PbWriter();
  for (const n of g.nodes) w.message(1, encodeNode(n));
  w.string(2, g.name);
  for (const t of g.initializers) w.message(5, encodeTensor(t));
  if (g.docString) w.string(10, g.docString);
  for (const i of g.inputs) w.message(11, encodeValueInfo(i));
  for (const o of g.outputs) w.message(12, encodeValueInfo(o));
  return w;
}

/** Serialise a ModelProto. */
export function encodeModel(m: ModelDef): Uint8Array {
  // ModelProto: ir_version=1, producer_name=2, producer_version=3, model_version=5,
  // doc_string=6, graph=7, opset_import=8, metadata_props=14
  // OperatorSetIdProto: domain=1, version=2; StringStringEntryProto: key=1, value=2
  const w = new PbWriter().varint(1, m.irVersion ?? 8);
  if (m.producerName) w.string(2, m.producerName);
  if (m.producerVersion) w.string(3, m.producerVersion);
  if (m.modelVersion !== undefined) w.varint(5, m.modelVersion);
  if (m.docString) w.string(6, m.docString);
  w.message(7, encodeGraph(m.graph));
  w.message(8, new PbWriter().string(1, '').varint(2, m.opset ?? 17));
  for (const [k, v] of Object.entries(m.metadata ?? {})) w.message(14, new PbWriter().string(1, k).string(2, v));
  return w.finish();
}

// ---------------------------------------------------------------------------
// Graph builders

/**
 * input [batch,1,28,28] -> Flatten -> (Gemm(transB=1) -> Relu)* -> Gemm -> logits [batch,10].
 * Each layer's W is [out,in] row-major (what Gemm with transB=1 expects).
 */
export function mlpGraph(
  name: string,
  input: { name: string; channels: number; height: number; width: number },
  outputName: string,
  layers: { W: Float32Array; b: Float32Array; inDim: number; outDim: number }[],
): GraphDef {
  const nodes: NodeDef[] = [];
  const initializers: InitializerDef[] = [];
  nodes.push({ opType: 'Flatten', name: 'flatten', inputs: [input.name], outputs: ['flat'], attributes: { axis: attr.int(1) } });
  let cur = 'flat';
  layers.forEach((ly, i) => {
    const last = i === layers.length - 1;
    const wName = `fc${i + 1}.weight`, bName = `fc${i + 1}.bias`;
    initializers.push({ name: wName, dims: [ly.outDim, ly.inDim], float32: ly.W });
    initializers.push({ name: bName, dims: [ly.outDim], float32: ly.b });
    const gemmOut = last ? outputName : `fc${i + 1}`;
    nodes.push({
      opType: 'Gemm', name: `fc${i + 1}`, inputs: [cur, wName, bName], outputs: [gemmOut],
      attributes: { alpha: attr.float(1), beta: attr.float(1), transB: attr.int(1) },
    });
    if (!last) {
      nodes.push({ opType: 'Relu', name: `relu${i + 1}`, inputs: [gemmOut], outputs: [`relu${i + 1}`] });
      cur = `relu${i + 1}`;
    }
  });
  const nOut = layers[layers.length - 1]!.outDim;
  return {
    name,
    nodes,
    initializers,
    inputs: [{ name: input.name, shape: ['batch', input.channels, input.height, input.width] }],
    outputs: [{ name: outputName, shape: ['batch', nOut] }],
  };
}
