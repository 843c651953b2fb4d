// gRPC clients for tests: built from the broker's .proto files with @grpc/grpc-js, as
// a consumer would build them, against a broker started with a gRPC port.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_FILES, PROTO_ROOT } from '../../src/front/grpc/protos.ts';
import { startTestBroker, type TestBroker } from './broker.ts';
import { startFleetBroker } from './fleet.ts';
import { freePort } from '../../bench/lib/process.ts';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export { freePort };

// What a client sees: defaults filled in (as most generated clients do), enums as names.
const CLIENT_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] };

type Ctor = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions) => grpc.Client & Record<string, any>;

export interface Clients {
  readonly address: string;
  readonly inference: grpc.Client & Record<string, any>;
  readonly chat: grpc.Client & Record<string, any>;
  readonly models: grpc.Client & Record<string, any>;
  readonly health: grpc.Client & Record<string, any>;
  close(): void;
}

export function clients(port: number, options: grpc.ClientOptions = {}, credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()): Clients {
  const def = protoLoader.loadSync([...PROTO_FILES], CLIENT_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as any;
  const address = `127.0.0.1:${port}`;
  const make = (C: Ctor) => new C(address, credentials, options);
  const c = {
    address,
    inference: make(pkg.edge_broker.v1.InferenceService),
    chat: make(pkg.edge_broker.v1.ChatService),
    models: make(pkg.edge_broker.v1.ModelService),
    health: make(pkg.grpc.health.v1.Health),
    close() {
      for (const x of [c.inference, c.chat, c.models, c.health]) x.close();
    },
  };
  return c;
}

export interface UnaryResult<T> {
  readonly error: grpc.ServiceError | null;
  readonly value: T | undefined;
  readonly metadata: grpc.Metadata | undefined;
}

/** A unary call as a promise that never rejects: the error (with its trailers) or the value, and the initial metadata. */
export function unary<T = any>(client: any, method: string, request: unknown, metadata = new grpc.Metadata(), options: grpc.CallOptions = {}): Promise<UnaryResult<T>> {
  return new Promise((resolve) => {
    let md: grpc.Metadata | undefined;
    const call = client[method](request, metadata, options, (error: grpc.ServiceError | null, value: T) => resolve({ error, value, metadata: md }));
    call.on('metadata', (m: grpc.Metadata) => (md = m));
  });
}

export interface StreamResult<T> {
  readonly messages: T[];
  /** The final status (code, details, trailers). */
  readonly status: grpc.StatusObject;
  readonly metadata: grpc.Metadata | undefined;
  readonly error: grpc.ServiceError | undefined;
}

/** A server-streaming call read to its end. */
export function serverStream<T = any>(client: any, method: string, request: unknown, metadata = new grpc.Metadata(), options: grpc.CallOptions = {}): Promise<StreamResult<T>> {
  const call = client[method](request, metadata, options) as grpc.ClientReadableStream<T>;
  return readAll(call);
}

export function readAll<T>(call: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T>): Promise<StreamResult<T>> {
  return new Promise((resolve) => {
    const messages: T[] = [];
    let md: grpc.Metadata | undefined;
    let error: grpc.ServiceError | undefined;
    call.on('metadata', (m: grpc.Metadata) => (md = m));
    call.on('data', (m: T) => messages.push(m));
    call.on('error', (e: grpc.ServiceError) => (error = e));
    call.on('status', (status: grpc.StatusObject) => {
      // 'status' can come before the last 'data' events are read out: let them drain.
      setImmediate(() => resolve({ messages, status, metadata: md, error }));
    });
  });
}

/** The text of a Chat/Complete stream's deltas. */
export function textOf(messages: readonly any[]): string {
  return messages.filter((m) => m.event === 'delta').map((m) => m.delta.content).join('');
}

export function md(values: Record<string, string>): grpc.Metadata {
  const m = new grpc.Metadata();
  for (const [k, v] of Object.entries(values)) m.set(k, v);
  return m;
}

/**
 * Starts with a free port, again with another if that one was taken before the broker bound it
 * (freePort's port is free when asked; another test file running alongside may take it first).
 * A broker that cannot bind its gRPC port has closed everything it had started (src/app.ts).
 */
async function onFreeGrpcPort(start: (port: string) => Promise<TestBroker>): Promise<TestBroker> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start(String(await freePort()));
    } catch (err) {
      if (attempt >= 5 || !/gRPC cannot listen.*EADDRINUSE/.test((err as Error).message)) throw err;
    }
  }
}

/** A broker with a gRPC front on a free port. */
export async function startGrpcBroker(env: Record<string, string> = {}): Promise<TestBroker> {
  return onFreeGrpcPort((port) => startTestBroker({ GRPC_PORT: port, ...env }));
}

interface Teardown {
  teardown(fn: () => unknown): void;
}

/** A broker serving `fleet` with a gRPC front on a free port (and no inference pool unless asked), closed when `t` ends. */
export async function startGrpcFleetBroker(t: Teardown, fleet: unknown, env: Record<string, string> = {}): Promise<TestBroker> {
  return onFreeGrpcPort((port) => startFleetBroker(t, fleet, { GRPC_PORT: port, INFER_ENABLED: 'false', ...env }));
}

const decoders = (() => {
  let d: Record<string, { requestDeserialize: (b: Buffer) => any }> | undefined;
  return () => {
    d ??= protoLoader.loadSync('status.proto', { ...CLIENT_OPTIONS, includeDirs: [new URL('../grpc/fixtures/', import.meta.url).pathname] })['testing.rpc.Decode'] as any;
    return d!;
  };
})();

export interface StatusDetails {
  readonly code: number;
  readonly message: string;
  /** ErrorInfo.reason: the broker's error code. */
  readonly reason: string | undefined;
  /** RetryInfo.retry_delay in seconds, when present. */
  readonly retryDelayS: number | undefined;
}

/** grpc-status-details-bin of an error's trailers, decoded (google.rpc.Status with ErrorInfo and RetryInfo). */
export function statusDetailsOf(trailers: grpc.Metadata | undefined): StatusDetails | undefined {
  const bin = trailers?.get('grpc-status-details-bin')[0];
  if (!(bin instanceof Buffer)) return undefined;
  const d = decoders();
  const s = d['Status']!.requestDeserialize(bin);
  let reason: string | undefined;
  let retryDelayS: number | undefined;
  for (const a of s.details) {
    if (a.type_url === 'type.googleapis.com/google.rpc.ErrorInfo') reason = d['ErrorInfo']!.requestDeserialize(a.value).reason;
    if (a.type_url === 'type.googleapis.com/google.rpc.RetryInfo') {
      const r = d['RetryInfo']!.requestDeserialize(a.value).retry_delay;
      retryDelayS = Number(r.seconds) + r.nanos / 1e9;
    }
  }
  return { code: s.code, message: s.message, reason, retryDelayS };
}

/** A reflection client (v1 or v1alpha) from @grpc/reflection's own .proto, as a reflection-only consumer builds it. */
export function reflectionClient(port: number, version: 'v1' | 'v1alpha' = 'v1'): any {
  const root = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection')), '..', 'proto');
  const def = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, { keepCase: true, includeDirs: [root], oneofs: true, defaults: true });
  const pkg = grpc.loadPackageDefinition(def) as any;
  return new pkg.grpc.reflection[version].ServerReflection(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}

/** FileDescriptorProto bytes, in the order given → a FileDescriptorSet (field 1, repeated). */
export function descriptorSet(files: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of files) {
    const len: number[] = [];
    let n = f.length;
    while (n >= 0x80) {
      len.push((n & 0x7f) | 0x80);
      n >>>= 7;
    }
    len.push(n);
    parts.push(Buffer.from([0x0a, ...len]), f);
  }
  return Buffer.concat(parts);
}
