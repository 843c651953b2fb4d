// The Open Inference Protocol over gRPC: inference.GRPCInferenceService from KServe's
// grpc_predict_v2.proto (proto/inference/), on the same core as REST (core.ts), so the
// names, versions, arms, checks and extensions are the same. Tensors travel in
// raw_input_contents / raw_output_contents (the typed `contents` are read too: fp32_contents
// and bytes_contents); BYTES in raw form are 4-byte little-endian lengths and bytes, as
// Triton sends them. Errors carry the gRPC status of their code in the one error table,
// with the broker's code and RetryInfo in the trailers (front/grpc/status.ts).
// ModelInfer is a client call like the broker's own Infer (src/front/grpc/call.ts):
// AUTH_MODE and the rate limit, an access-log line, a tracking row (`grpc.oip.infer`),
// the trace id, and an end at shutdown.
//
// The broker's gRPC server registers it (a GrpcService, src/app.ts) with
// addV2GrpcService(server, { core, guards, accessLog, calls }) and lists the service in
// reflection with v2PackageDefinition().
import { apiKeyOf } from '../../guard/api-key.ts';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import { BrokerError } from '../../errors.ts';
import type { ActiveCalls } from '../../front/grpc/active.ts';
import { checkCall, serveUnary, type CallGuards } from '../../front/grpc/call.ts';
import type { Logger } from '../../obs/logger.ts';
import { headerPriority } from '../../policy/priority.ts';
import { noteV2Inference } from '../routes.ts';
import type { V2Core } from './core.ts';
import { serializeBytes } from './rest.ts';
import type { InferRequest, InputTensor, RequestedOutput, TensorData } from './types.ts';

export const V2_PROTO = fileURLToPath(new URL('../../../proto/inference/grpc_predict_v2.proto', import.meta.url));
export const V2_SERVICE = 'inference.GRPCInferenceService';

const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

let definition: protoLoader.PackageDefinition | undefined;
/** The loaded proto, for grpc.loadPackageDefinition and for reflection. */
export function v2PackageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.loadSync(V2_PROTO, LOADER_OPTIONS);
  return definition;
}

export interface V2GrpcDeps {
  readonly core: V2Core;
  /** What the gRPC front hands a registered service: its guards (and recorder), access log and open calls. */
  readonly guards: CallGuards;
  readonly accessLog: Logger;
  readonly calls: ActiveCalls;
}

// Messages as proto-loader hands them over (keepCase, defaults, oneofs).
interface InferParameter {
  readonly parameter_choice?: 'bool_param' | 'int64_param' | 'string_param' | 'double_param' | 'uint64_param';
  readonly bool_param?: boolean;
  readonly int64_param?: number;
  readonly string_param?: string;
  readonly double_param?: number;
  readonly uint64_param?: number;
}
type Params = Record<string, InferParameter>;
interface Contents {
  readonly fp32_contents: number[];
  readonly bytes_contents: Buffer[];
  readonly [other: string]: unknown[];
}
interface ModelInferRequest {
  readonly model_name: string;
  readonly model_version: string;
  readonly id: string;
  readonly parameters: Params;
  readonly inputs: { name: string; datatype: string; shape: number[]; parameters: Params; contents: Contents | null }[];
  readonly outputs: { name: string; parameters: Params }[];
  readonly raw_input_contents: Buffer[];
}

/** InferParameter map to plain values (bool, int64, uint64 and double as numbers, string). */
function plain(params: Params | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, p] of Object.entries(params ?? {})) if (p.parameter_choice !== undefined) out[k] = p[p.parameter_choice];
  return out;
}

function toInferRequest(r: ModelInferRequest): InferRequest {
  const raw = r.raw_input_contents ?? [];
  if (raw.length > 0 && raw.length !== r.inputs.length) throw new BrokerError('invalid_request', `raw_input_contents has ${raw.length} entries for ${r.inputs.length} inputs`);
  const inputs: InputTensor[] = r.inputs.map((t, i) => {
    let data: TensorData;
    const typed = t.contents !== null && t.contents !== undefined && Object.values(t.contents).some((v) => Array.isArray(v) && v.length > 0);
    if (raw.length > 0) {
      if (typed) throw new BrokerError('invalid_request', `input ${t.name}: contents and raw_input_contents together`);
      data = { kind: 'raw', bytes: raw[i]! };
    } else {
      // Contents of another type (int_contents on an FP32 input) would read as none: "needs 784
      // values, got 0" without saying why. Named instead.
      const want = t.datatype === 'BYTES' ? 'bytes_contents' : 'fp32_contents';
      const other = typed ? Object.entries(t.contents!).find(([k, v]) => k !== want && Array.isArray(v) && v.length > 0)?.[0] : undefined;
      if (other !== undefined && (t.datatype === 'BYTES' || t.datatype === 'FP32')) throw new BrokerError('invalid_request', `input ${t.name}: a ${t.datatype} input takes ${want} (or raw_input_contents), not ${other}`);
      if (t.datatype === 'BYTES') data = { kind: 'elements', elements: t.contents?.bytes_contents ?? [] };
      else data = { kind: 'json', values: t.datatype === 'FP32' ? (t.contents?.fp32_contents ?? []) : [] };
    }
    return { name: t.name, datatype: t.datatype, shape: t.shape.map(Number), data };
  });
  const outputs: RequestedOutput[] = r.outputs.map((o) => ({ name: o.name, parameters: plain(o.parameters) }));
  return { id: r.id === '' ? undefined : r.id, inputs, outputs: outputs.length > 0 ? outputs : undefined, parameters: plain(r.parameters) };
}

export function addV2GrpcService(server: grpc.Server, deps: V2GrpcDeps): void {
  const { core } = deps;
  // Every call as ModelInfer's: trace id in the metadata (and error trailers), one access-log
  // line, the table's status; only inference is a tracked request.
  const unary =
    <Req, Res>(fn: (req: Req) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) =>
      serveUnary({ accessLog: deps.accessLog, calls: deps.calls }, call, callback, 'grpc.oip', async () => fn(call.request));
  const pkg = grpc.loadPackageDefinition(v2PackageDefinition()) as unknown as { inference: { GRPCInferenceService: grpc.ServiceClientConstructor } };
  const version = (v: string): string | undefined => (v === '' ? undefined : v);
  server.addService(pkg.inference.GRPCInferenceService.service, {
    ServerLive: unary(() => ({ live: core.live() })),
    ServerReady: unary(() => ({ ready: core.ready() })),
    ModelReady: unary((r: { name: string; version: string }) => ({ ready: core.modelReady(r.name, version(r.version)) })),
    ServerMetadata: unary(() => core.serverMetadata()),
    ModelMetadata: unary((r: { name: string; version: string }) => core.modelMetadata(r.name, version(r.version))),
    ModelInfer: (call: grpc.ServerUnaryCall<ModelInferRequest, unknown>, callback: grpc.sendUnaryData<unknown>) =>
      serveUnary({ accessLog: deps.accessLog, calls: deps.calls, recorder: deps.guards.recorder }, call, callback, 'grpc.oip.infer', async (req, signal) => {
        await checkCall(deps.guards, req);
        const r = call.request;
        if (req.facts !== undefined) req.facts.model = r.model_name;
        core.checkModel(r.model_name, version(r.model_version));
        const reply = await core.infer(r.model_name, version(r.model_version), toInferRequest(r), { headerPriority: headerPriority(req.headers['x-broker-priority']), priorityCeiling: deps.guards.priorityCeiling?.(apiKeyOf(req.headers), req.caller), signal });
        noteV2Inference(req.facts, reply);
        return {
          model_name: reply.model_name,
          model_version: reply.model_version,
          id: reply.id ?? '',
          parameters: Object.fromEntries(Object.entries(reply.parameters).map(([k, v]) => [k, { int64_param: v }])),
          outputs: reply.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape })),
          raw_output_contents: reply.outputs.map((o) => (o.datatype === 'FP32' ? Buffer.from(o.data.buffer, o.data.byteOffset, o.data.byteLength) : serializeBytes(o.data))),
        };
      }),
  });
}
