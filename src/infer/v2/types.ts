import type { AbortLike } from '../../abort.ts';
// The Open Inference Protocol (KServe v2) as the core sees it, whatever carried it:
// the REST codec (rest.ts: JSON and Triton's binary tensor extension) and, later, the
// gRPC service (grpc_predict_v2.proto) both build these and encode what comes back.

/** Tensor contents as they arrived; the core checks them against the model. */
export type TensorData =
  /** JSON `data`: flat or nested row-major numbers, or strings (BYTES, base64 for binary content). */
  | { readonly kind: 'json'; readonly values: unknown }
  /** Little-endian contents: the binary tensor extension, gRPC raw_input_contents. BYTES elements are 4-byte length + bytes. */
  | { readonly kind: 'raw'; readonly bytes: Buffer }
  /** BYTES elements already apart (gRPC bytes_contents). */
  | { readonly kind: 'elements'; readonly elements: readonly Buffer[] };

export interface InputTensor {
  readonly name: string;
  readonly datatype: string;
  readonly shape: readonly number[];
  readonly data: TensorData;
}

export interface RequestedOutput {
  readonly name: string;
  /** The output's `parameters` (classification, and binary_data which the REST codec reads). */
  readonly parameters: Readonly<Record<string, unknown>>;
}

export interface InferRequest {
  readonly id?: string | undefined;
  readonly inputs: readonly InputTensor[];
  /** Absent: every output the model serves, as a tensor. */
  readonly outputs?: readonly RequestedOutput[] | undefined;
  /** The request's `parameters`: priority and timeout (schedule policy), binary_data_output (REST). */
  readonly parameters: Readonly<Record<string, unknown>>;
}

/** What the transport adds: the sticky cookie's arm and x-broker-priority, when the client sent them. */
export interface CallContext {
  readonly cookieArm?: string | undefined;
  readonly headerPriority?: number | undefined;
  /** What the caller's API key allows (infer/admission.ts): the request's priority may only be lower. */
  readonly priorityCeiling?: number | undefined;
  /** The client went away: its items leave the queue, and it counts as neither success nor failure. */
  readonly signal?: AbortLike | undefined;
  /**
   * The reply is JSON (REST): an FP32 output not asked for as binary must hold finite values
   * only, else the request fails as the model's (500 internal, counted as a failure).
   */
  readonly jsonFloats?: { readonly binaryByDefault: boolean } | undefined;
}

export type OutputTensor =
  | { readonly name: string; readonly datatype: 'FP32'; readonly shape: readonly number[]; readonly data: Float32Array; readonly requested: RequestedOutput | undefined }
  /** Classification: "value:index:label" strings. */
  | { readonly name: string; readonly datatype: 'BYTES'; readonly shape: readonly number[]; readonly data: readonly string[]; readonly requested: RequestedOutput | undefined };

export interface InferResponse {
  readonly model_name: string;
  readonly model_version: string;
  readonly id?: string;
  readonly outputs: readonly OutputTensor[];
  /**
   * The response's `parameters` (integers, as the gRPC InferParameter carries them): the
   * slowest item's admission queue, decode and compute time in microseconds and its
   * batch size, as /v1/infer's `timings` and `batch_size`.
   */
  readonly parameters: Readonly<Record<'queue_us' | 'decode_us' | 'infer_us' | 'batch_size', number>>;
  /** Which arm answered, and whether the client named it (for the sticky cookie; not on the wire). */
  readonly arm: 'A' | 'B';
  readonly named: boolean;
}

export interface MetadataTensor {
  readonly name: string;
  readonly datatype: string;
  readonly shape: readonly number[];
}

export interface ModelMetadata {
  readonly name: string;
  readonly versions: readonly string[];
  readonly platform: 'onnxruntime_onnx';
  readonly inputs: readonly MetadataTensor[];
  readonly outputs: readonly MetadataTensor[];
}

export interface ServerMetadata {
  readonly name: string;
  readonly version: string;
  readonly extensions: readonly string[];
}
