// The Open Inference Protocol over HTTP (KServe's required_api.md): health, metadata and
// inference under /v2, JSON or with Triton's binary tensor extension (a JSON header of
// Inference-Header-Content-Length bytes, then the tensors' raw bytes in input order).
// Errors are {"error": "message"} (v2ErrorShape) with the status of their code in
// the one error table. These are control-plane routes: data-plane threads forward /v2
// requests to the main thread, which owns the models (docs/oip.md says why).
import { RequestAbort } from '../../abort.ts';
import { apiKeyOf } from '../../guard/api-key.ts';
import { BrokerError } from '../../errors.ts';
import { v2ErrorShape } from '../../front/error-body.ts';
import { parseJsonBody } from '../../front/json-depth.ts';
import type { Route, RouteContext } from '../../front/http/router.ts';
import type { PriorityCeiling } from '../admission.ts';
import { headerPriority } from '../../policy/priority.ts';
import { readCookie } from '../arms.ts';
import { noteV2Inference } from '../routes.ts';
import { wantsBinary, type V2Core } from './core.ts';
import type { InferRequest, InferResponse, InputTensor, RequestedOutput, TensorData } from './types.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };
export const HEADER_LENGTH = 'inference-header-content-length';

/** `ceiling`: what a caller's API key allows it (infer/admission.ts); none in bare tests. */
export function v2Routes(core: V2Core, stickyCookie: string, ceiling?: PriorityCeiling): Route[] {
  const json = (ctx: RouteContext, status: number, body: unknown): void => ctx.sink.send(status, JSON_HEADERS, JSON.stringify(body));
  const get = (path: string, handle: (ctx: RouteContext) => void | Promise<void>): Route => ({ method: 'GET', path, errorShape: v2ErrorShape, handle });
  const version = (ctx: RouteContext): string | undefined => ctx.params['version'];

  const ready = (ctx: RouteContext): void => {
    const name = ctx.params['model']!;
    const ok = core.modelReady(name, version(ctx));
    json(ctx, ok ? 200 : 503, { name, ...(version(ctx) !== undefined ? { version: version(ctx) } : {}), ready: ok });
  };
  const metadata = async (ctx: RouteContext): Promise<void> => json(ctx, 200, await core.modelMetadata(ctx.params['model']!, version(ctx)));
  const config = async (ctx: RouteContext): Promise<void> => json(ctx, 200, await core.modelConfig(ctx.params['model']!, version(ctx)));
  const infer: Route['handle'] = async (ctx) => {
    const { req } = ctx;
    // Headers are read before the first await.
    const cookieArm = readCookie(req.headers['cookie'], stickyCookie);
    const priority = headerPriority(req.headers['x-broker-priority']);
    const priorityCeiling = ceiling?.(apiKeyOf(req.headers), req.caller);
    // The name the request gave, first: an unknown model or a bad body is recorded with it (as on gRPC).
    if (req.facts !== undefined) req.facts.model = ctx.params['model'];
    core.checkModel(ctx.params['model']!, version(ctx));
    const request = parseInferRequest(ctx.body as Buffer, req.headers[HEADER_LENGTH]);
    // A client gone while its items wait takes them out of the queue (as on /v1/infer).
    const signal = new RequestAbort();
    ctx.sink.onAbort(() => signal.abort());
    const asked = request.parameters['binary_data_output'];
    if (asked !== undefined && asked !== null && typeof asked !== 'boolean') throw bad('parameters.binary_data_output must be true or false');
    const binaryByDefault = asked === true;
    const reply = await core.infer(ctx.params['model']!, version(ctx), request, { cookieArm, headerPriority: priority, priorityCeiling, signal, jsonFloats: { binaryByDefault } });
    noteV2Inference(req.facts, reply);
    const { headers, body } = encodeInferResponse(reply, binaryByDefault);
    // Traffic the A/B policy placed keeps its arm, as on /v1/infer; a named version is the client's choice.
    if (!reply.named) headers['set-cookie'] = `${stickyCookie}=${reply.arm}; Path=/; Max-Age=2592000; SameSite=Lax; HttpOnly`;
    ctx.sink.send(200, headers, body);
  };
  const post = (path: string): Route => ({ method: 'POST', path, body: 'raw', rateLimited: true, errorShape: v2ErrorShape, track: 'oip.infer', handle: infer });

  return [
    get('/v2', (ctx) => json(ctx, 200, core.serverMetadata())),
    get('/v2/health/live', (ctx) => json(ctx, 200, { live: core.live() })),
    get('/v2/health/ready', (ctx) => {
      const ok = core.ready();
      json(ctx, ok ? 200 : 503, { ready: ok });
    }),
    get('/v2/models/:model', metadata),
    get('/v2/models/:model/versions/:version', metadata),
    get('/v2/models/:model/ready', ready),
    get('/v2/models/:model/config', config),
    get('/v2/models/:model/versions/:version/config', config),
    get('/v2/models/:model/versions/:version/ready', ready),
    post('/v2/models/:model/infer'),
    post('/v2/models/:model/versions/:version/infer'),
  ];
}

const bad = (message: string): BrokerError => new BrokerError('invalid_request', message);

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The body: all JSON, or a JSON header of `headerLength` bytes followed by binary tensor data. */
export function parseInferRequest(body: Buffer, headerLength: string | undefined): InferRequest {
  let jsonEnd = body.length;
  if (headerLength !== undefined) {
    if (!/^\d+$/.test(headerLength) || Number(headerLength) > body.length) throw bad(`Inference-Header-Content-Length must be an integer from 0 to the body length (${body.length}), got ${headerLength}`);
    jsonEnd = Number(headerLength);
  }
  let raw: unknown;
  try {
    raw = parseJsonBody(body, 0, jsonEnd);
  } catch (err) {
    if (err instanceof BrokerError) throw err;
    throw new BrokerError('invalid_json', headerLength === undefined ? 'request body is not valid JSON' : 'the JSON header (Inference-Header-Content-Length bytes) is not valid JSON');
  }
  if (!isObject(raw)) throw new BrokerError('invalid_json', 'request body must be a JSON object');
  // null stands for absent, as for parameters (pydantic-built clients send `"id": null`).
  if (raw.id != null && typeof raw.id !== 'string') throw bad('id must be a string');
  const parameters = raw.parameters ?? {};
  if (!isObject(parameters)) throw bad('parameters must be an object');
  if (!Array.isArray(raw.inputs) || raw.inputs.length === 0) throw bad('inputs must be a non-empty array');

  let offset = jsonEnd;
  const inputs: InputTensor[] = raw.inputs.map((t: unknown, i: number) => {
    if (!isObject(t)) throw bad(`inputs[${i}] must be an object`);
    const { name, datatype, shape } = t;
    if (typeof name !== 'string' || name === '') throw bad(`inputs[${i}].name must be a non-empty string`);
    if (typeof datatype !== 'string') throw bad(`input ${name}: datatype must be a string`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw bad(`input ${name}: shape must be an array of non-negative integers`);
    const params = t.parameters ?? {};
    if (!isObject(params)) throw bad(`input ${name}: parameters must be an object`);
    let data: TensorData;
    const size = params['binary_data_size'];
    if (size != null) {
      if (typeof size !== 'number' || !Number.isInteger(size) || size < 0) throw bad(`input ${name}: binary_data_size must be a non-negative integer`);
      if (offset + size > body.length) throw bad(`input ${name}: binary_data_size ${size} runs past the body (${body.length - offset} bytes left)`);
      // Both: which one counts would be a guess (gRPC refuses contents with raw_input_contents too).
      if (t.data !== undefined) throw bad(`input ${name}: data and parameters.binary_data_size together; send one`);
      data = { kind: 'raw', bytes: body.subarray(offset, offset + size) };
      offset += size;
    } else {
      if (t.data === undefined) throw bad(`input ${name}: data is required (or parameters.binary_data_size with binary data after the JSON header)`);
      data = { kind: 'json', values: t.data };
    }
    return { name, datatype, shape: shape as number[], data };
  });
  if (offset !== body.length) throw bad(`${body.length - offset} bytes after the JSON and the inputs' binary_data_size`);

  let outputs: RequestedOutput[] | undefined;
  if (raw.outputs != null) {
    if (!Array.isArray(raw.outputs)) throw bad('outputs must be an array');
    outputs = raw.outputs.map((o: unknown, i: number) => {
      if (!isObject(o) || typeof o.name !== 'string') throw bad(`outputs[${i}] must be an object with a name`);
      const p = o.parameters ?? {};
      if (!isObject(p)) throw bad(`output ${o.name}: parameters must be an object`);
      return { name: o.name, parameters: p };
    });
  }
  return { id: (raw.id ?? undefined) as string | undefined, inputs, outputs, parameters };
}

/**
 * JSON, or with any output asked for as binary (its `binary_data`, else the request's
 * `binary_data_output`) the JSON header and then those outputs' bytes in output order.
 */
export function encodeInferResponse(reply: InferResponse, binaryByDefault: boolean): { headers: Record<string, string>; body: string | Buffer } {
  const chunks: Buffer[] = [];
  const outputs = reply.outputs.map((o) => {
    const binary = wantsBinary(o.requested, binaryByDefault);
    const head = { name: o.name, datatype: o.datatype, shape: o.shape };
    if (!binary) {
      // Non-finite FP32 values were refused before the request counted (core's finiteForJson).
      return { ...head, data: o.datatype === 'FP32' ? Array.from(o.data) : o.data };
    }
    const bytes = o.datatype === 'FP32' ? Buffer.from(o.data.buffer, o.data.byteOffset, o.data.byteLength) : serializeBytes(o.data);
    chunks.push(bytes);
    return { ...head, parameters: { binary_data_size: bytes.length } };
  });
  const header = JSON.stringify({ model_name: reply.model_name, model_version: reply.model_version, ...(reply.id !== undefined ? { id: reply.id } : {}), parameters: reply.parameters, outputs });
  if (chunks.length === 0) return { headers: { ...JSON_HEADERS }, body: header };
  const head = Buffer.from(header);
  return {
    headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length) },
    body: Buffer.concat([head, ...chunks]),
  };
}

/** BYTES elements as the binary extension lays them out: 4-byte little-endian length, then the bytes. */
export function serializeBytes(elements: readonly (string | Uint8Array)[]): Buffer {
  const parts = elements.map((e) => (typeof e === 'string' ? Buffer.from(e) : e));
  const out = Buffer.allocUnsafe(parts.reduce((a, p) => a + 4 + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.writeUInt32LE(p.length, off);
    out.set(p, off + 4);
    off += 4 + p.length;
  }
  return out;
}
