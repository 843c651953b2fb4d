// A small Open Inference Protocol (KServe v2) REST client, written from the spec
// (KServe's required_api.md and Triton's binary tensor extension), not from the broker's
// codec: plain fetch, JSON mode or binary mode (a JSON header of
// Inference-Header-Content-Length bytes, then each tensor's little-endian bytes, BYTES
// elements as a 4-byte little-endian length and the bytes).

export type Mode = 'json' | 'binary';

export type Tensor =
  | { name: string; datatype: 'FP32'; shape: number[]; data: Float32Array }
  /** Encoded images (JSON mode sends them base64, as the broker documents) or strings. */
  | { name: string; datatype: 'BYTES'; shape: number[]; data: (Buffer | string)[] };

export interface InferOptions {
  version?: string;
  inputs: Tensor[];
  outputs?: { name: string; parameters?: Record<string, unknown> }[];
  id?: string;
  parameters?: Record<string, unknown>;
  headers?: Record<string, string>;
}

export interface InferResult {
  status: number;
  headers: Headers;
  /** On 200. */
  model_name?: string;
  model_version?: string;
  id?: string;
  outputs?: Tensor[];
  /** On an error: the body's `error` string. */
  error?: string;
  /** The whole JSON (header) object. */
  json: any;
}

export class V2Client {
  constructor(
    readonly base: string,
    readonly mode: Mode,
  ) {}

  async get(path: string): Promise<{ status: number; json: any; headers: Headers }> {
    const res = await fetch(this.base + path);
    const text = await res.text();
    return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : undefined };
  }

  async infer(model: string, o: InferOptions): Promise<InferResult> {
    const path = `/v2/models/${encodeURIComponent(model)}${o.version !== undefined ? `/versions/${encodeURIComponent(o.version)}` : ''}/infer`;
    const binary = this.mode === 'binary';
    const blobs: Buffer[] = [];
    const inputs = o.inputs.map((t) => {
      const head = { name: t.name, shape: t.shape, datatype: t.datatype };
      if (!binary) return { ...head, data: t.datatype === 'FP32' ? Array.from(t.data) : t.data.map((d) => (typeof d === 'string' ? d : d.toString('base64'))) };
      const bytes = t.datatype === 'FP32' ? Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength) : lengthPrefixed(t.data.map((d) => (typeof d === 'string' ? Buffer.from(d) : d)));
      blobs.push(bytes);
      return { ...head, parameters: { binary_data_size: bytes.length } };
    });
    const outputs = o.outputs?.map((out) => (binary ? { ...out, parameters: { ...out.parameters, binary_data: true } } : out));
    const request = {
      ...(o.id !== undefined ? { id: o.id } : {}),
      inputs,
      ...(outputs !== undefined ? { outputs } : {}),
      parameters: { ...o.parameters, ...(binary ? { binary_data_output: true } : {}) },
    };
    const header = Buffer.from(JSON.stringify(request));
    const res = await fetch(this.base + path, {
      method: 'POST',
      headers: binary
        ? { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length), ...o.headers }
        : { 'content-type': 'application/json', ...o.headers },
      body: binary ? Buffer.concat([header, ...blobs]) : header,
    });
    return decodeResponse(res);
  }
}

export function lengthPrefixed(elements: Buffer[]): Buffer {
  return Buffer.concat(
    elements.flatMap((e) => {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(e.length);
      return [len, e];
    }),
  );
}

async function decodeResponse(res: Response): Promise<InferResult> {
  const body = Buffer.from(await res.arrayBuffer());
  const hl = res.headers.get('inference-header-content-length');
  const jsonEnd = hl === null ? body.length : Number(hl);
  const json = JSON.parse(body.toString('utf8', 0, jsonEnd));
  if (res.status !== 200) return { status: res.status, headers: res.headers, error: json.error, json };
  let off = jsonEnd;
  const outputs: Tensor[] = json.outputs.map((o: any): Tensor => {
    const size = o.parameters?.binary_data_size;
    if (size === undefined) {
      return o.datatype === 'FP32' ? { name: o.name, datatype: 'FP32', shape: o.shape, data: Float32Array.from(o.data.flat(Infinity)) } : { name: o.name, datatype: 'BYTES', shape: o.shape, data: o.data.flat(Infinity) };
    }
    const bytes = body.subarray(off, off + size);
    off += size;
    if (o.datatype === 'FP32') return { name: o.name, datatype: 'FP32', shape: o.shape, data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
    const strings: string[] = [];
    for (let p = 0; p < bytes.length; ) {
      const n = bytes.readUInt32LE(p);
      strings.push(bytes.toString('utf8', p + 4, p + 4 + n));
      p += 4 + n;
    }
    return { name: o.name, datatype: 'BYTES', shape: o.shape, data: strings };
  });
  if (off !== body.length) throw new Error(`response has ${body.length - off} bytes beyond its outputs`);
  return { status: res.status, headers: res.headers, model_name: json.model_name, model_version: json.model_version, id: json.id, outputs, json };
}
