// The gRPC front: a grpc-js server on GRPC_PORT, on the main thread (the control
// plane, next to the inference pool). It serves edge_broker.v1 (inference, chat,
// models), grpc.health.v1 and server reflection (v1 and v1alpha), counts every call
// with go-grpc-prometheus's metrics, and shuts down gracefully.
//
// Adding a service (e.g. KServe v2's GRPCInferenceService): pass a GrpcService in
// `services`: its package definition (so reflection lists it) and a register function
// that adds its implementation to the server. Its calls are counted by the same
// interceptor, and its name gets a health status (SERVING once registered).
import type { PriorityCeiling } from '../../infer/admission.ts';
import { readFileSync } from 'node:fs';
import type * as http2 from 'node:http2';
import * as tls from 'node:tls';
import { Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { PackageDefinition } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import type { Logger } from '../../obs/logger.ts';
import type { Metrics } from '../../obs/metrics.ts';
import type { RateLimiter } from '../../guard/rate-limit.ts';
import type { BrokerRequest } from '../reply.ts';
import type { FleetSource } from '../../fleet/fleet.ts';
import type { LlmProxy } from '../../llm/proxy.ts';
import type { Admission } from '../../llm/routes.ts';
import type { PromptLimits } from '../../llm/request.ts';
import type { InferBackend } from '../../infer/routes.ts';
import type { InferService } from '../../infer/service.ts';
import { ActiveCalls } from './active.ts';
import type { CallGuards } from './call.ts';
import { chatService } from './chat.ts';
import type { Recorder } from '../../track/recorder.ts';
import { HealthStatus, NOT_SERVING, SERVING } from './health.ts';
import { inferenceService } from './inference.ts';
import { metricsInterceptor } from './metrics.ts';
import { modelService } from './models.ts';
import { packageDefinition, reflectedDefinition, SERVICES } from './protos.ts';

/** A service to serve next to the broker's own. */
export interface GrpcService {
  /** Its .proto package definition (@grpc/proto-loader), served by reflection too. */
  readonly definition: PackageDefinition;
  /** Fully-qualified names of its services: each gets a health status. */
  readonly names: readonly string[];
  /** It serves inference: its health follows the models' readiness (NOT_SERVING with inference off). */
  readonly inference?: boolean;
  /**
   * Adds its implementations to the server. `calls` ends its open calls after shutdown's
   * grace period; `guards` (AUTH_MODE, rate limit, request tracking) and `accessLog` are
   * the broker's own services', for client calls served like theirs (serveUnary in call.ts).
   */
  register(server: grpc.Server, ctx: { readonly calls: ActiveCalls; readonly health: HealthStatus; readonly guards: CallGuards; readonly accessLog: Logger }): void;
}

export interface GrpcFrontOptions {
  readonly host: string;
  readonly port: number;
  /** PEM files; both or neither. */
  readonly tls?: { readonly certPath: string; readonly keyPath: string };
  /** Largest message received (MAX_BODY_BYTES). */
  readonly maxMessageBytes: number;
  readonly keepaliveTimeMs: number;
  readonly keepaliveTimeoutMs: number;
  /** Close a connection that has not sent its HTTP/2 preface (SETTINGS) by then. Default 10 s. */
  readonly handshakeTimeoutMs?: number;
  /** End a unary or server-streaming call whose request has not arrived whole by then (request_timeout). Default 30 s. */
  readonly requestTimeoutMs?: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS: calls open at once on one connection. Default 1000. */
  readonly maxConcurrentStreams?: number;
  /** Health/Watch streams open at once. Default 1000. */
  readonly maxHealthWatchers?: number;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly accessLog: Logger;
  readonly rateLimiter: RateLimiter;
  readonly knownKey: (key: string) => boolean;
  /** AUTH_MODE for the client services (src/guard/client-auth.ts); undefined when open. */
  readonly client?: (req: BrokerRequest) => void | Promise<void>;
  readonly source: FleetSource;
  readonly admission: Admission;
  readonly proxy: LlmProxy;
  readonly limits: PromptLimits;
  /** The inference service (undefined with INFER_ENABLED=false) and what Infer calls. */
  readonly inferService: InferService | undefined;
  readonly infer: InferBackend;
  readonly services?: readonly GrpcService[];
  /** Request tracking: one row per Chat, Complete, Infer and InferStream call, and a registered service's that serve like them (default: off). */
  readonly recorder?: Recorder;
  /** What a caller's API key allows its inference requests (infer/admission.ts). */
  readonly priorityCeiling?: PriorityCeiling;
}

export interface GrpcFront {
  readonly port: number;
  readonly health: HealthStatus;
  /** Calls in progress. */
  readonly active: number;
  /**
   * Health NOT_SERVING, then no new calls while open ones get up to graceMs to finish;
   * those still open then end with UNAVAILABLE. Resolves with how many were cut.
   */
  close(graceMs: number): Promise<number>;
  /** Cuts close()'s grace period short (a second signal): open calls end now. */
  hurry(): void;
}

/** Chat and Complete send messages the compiled chain already encoded: bytes pass through. */
const preEncoded = (b: Uint8Array): Buffer => (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength));

export async function startGrpcFront(o: GrpcFrontOptions): Promise<GrpcFront> {
  const defs = packageDefinition();
  const loaded = grpc.loadPackageDefinition(defs) as unknown as Record<string, Record<string, Record<string, { service: grpc.ServiceDefinition }>>>;
  const v1 = loaded['edge_broker']!['v1']!;
  const server = new grpc.Server({
    'grpc.max_receive_message_length': o.maxMessageBytes,
    'grpc.keepalive_time_ms': o.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': o.keepaliveTimeoutMs,
    // Clients may ping as often as the server does, calls or not, without being sent GOAWAY.
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': Math.min(o.keepaliveTimeMs, 10_000),
    // grpc-js advertises no limit (2^32-1): one connection could hold any number of calls open.
    // A client past it waits for a slot (its HTTP/2 stack queues the call); it is not refused.
    'grpc.max_concurrent_streams': o.maxConcurrentStreams ?? 1000,
    interceptors: [metricsInterceptor(o.metrics, o.accessLog, o.requestTimeoutMs ?? 30_000)],
  });
  const health = new HealthStatus(o.maxHealthWatchers ?? 1000);
  const calls = new ActiveCalls();
  const guards: CallGuards = { rateLimiter: o.rateLimiter, metrics: o.metrics, knownKey: o.knownKey, client: o.client, recorder: o.recorder, priorityCeiling: o.priorityCeiling };

  const chatBase = v1['ChatService']!.service;
  const chatDef: grpc.ServiceDefinition = Object.fromEntries(Object.entries(chatBase).map(([name, d]) => [name, { ...d, responseSerialize: preEncoded }]));
  server.addService(chatDef, chatService({ ...guards, source: o.source, admission: o.admission, proxy: o.proxy, limits: o.limits, accessLog: o.accessLog, calls }));
  server.addService(v1['InferenceService']!.service, inferenceService({ ...guards, infer: o.infer, accessLog: o.accessLog, calls }));
  server.addService(v1['ModelService']!.service, modelService({ source: o.source, infer: o.inferService, accessLog: o.accessLog }));
  const healthDef = (loaded['grpc'] as unknown as Record<string, Record<string, Record<string, { service: grpc.ServiceDefinition }>>>)['health']!['v1']!['Health']!.service;
  server.addService(healthDef, health.implementation());

  let reflected: PackageDefinition = defs;
  const inferenceNames: string[] = [SERVICES.inference];
  for (const s of o.services ?? []) {
    s.register(server, { calls, health, guards, accessLog: o.accessLog });
    if (s.inference === true) inferenceNames.push(...s.names);
    else for (const n of s.names) health.set(n, SERVING);
    reflected = { ...reflected, ...s.definition };
  }
  new ReflectionService(reflectedDefinition(reflected)).addToServer(server);

  // Readiness: the broker ("") and inference once the models are loaded; chat and models at once.
  health.set(SERVICES.chat, SERVING);
  health.set(SERVICES.models, SERVING);
  // The health and reflection services themselves, by name (a probe configured with one of them).
  for (const n of ['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection']) health.set(n, SERVING);
  const infer = o.inferService;
  health.set('', infer === undefined || infer.ready ? SERVING : NOT_SERVING);
  for (const n of inferenceNames) health.set(n, infer !== undefined && infer.ready ? SERVING : NOT_SERVING);
  if (infer !== undefined && !infer.ready) {
    infer.waitReady().then(
      () => {
        health.set('', SERVING);
        for (const n of inferenceNames) health.set(n, SERVING);
      },
      (err: unknown) => o.logger.error({ err }, 'inference models failed to load: gRPC health stays NOT_SERVING'),
    );
  }

  const credentials = o.tls === undefined ? grpc.ServerCredentials.createInsecure() : tlsCredentials(o.tls);
  const port = await new Promise<number>((resolve, reject) => {
    const host = o.host.includes(':') ? `[${o.host}]` : o.host;
    // grpc-js words a taken port as "No address added out of total 1 resolved errors: [listen EADDRINUSE ...]".
    server.bindAsync(`${host}:${o.port}`, credentials, (err, bound) => (err ? reject(new Error(`gRPC cannot listen on ${host}:${o.port} (GRPC_PORT; 0 turns gRPC off): ${/\[(.*)\]/.exec(err.message)?.[1] ?? err.message}`)) : resolve(bound)));
  });
  o.logger.info({ grpc_port: port, tls: o.tls !== undefined }, 'gRPC listening');
  if (!deadlineHandshakes(server, o.handshakeTimeoutMs ?? 10_000)) o.logger.warn('gRPC: this grpc-js keeps its HTTP/2 servers elsewhere; connections that never finish their preface stay open');
  if (!joinRepeatedAuthorization(server)) o.logger.warn('gRPC: this grpc-js keeps its HTTP/2 servers elsewhere; a call with authorization twice is judged on the first');

  let closing: Promise<number> | undefined;
  let endGrace: () => void = () => undefined;
  const graceOver = new Promise<void>((r) => (endGrace = r));
  return {
    port,
    health,
    get active() {
      return calls.size;
    },
    hurry() {
      endGrace();
    },
    close(graceMs) {
      closing ??= (async () => {
        health.shutdown();
        const drained = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
        let timer: NodeJS.Timeout | undefined;
        const late = await Promise.race([drained.then(() => false), graceOver.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs)))]);
        clearTimeout(timer);
        if (!late) return 0;
        // Streams still open end with UNAVAILABLE (shutting_down) after what they sent.
        const cut = calls.stopAll();
        await Promise.race([drained, new Promise((r) => setTimeout(r, 1000).unref())]);
        server.forceShutdown();
        return cut;
      })();
      return closing;
    },
  };
}

/**
 * grpc-js keeps a connection that never finishes its HTTP/2 preface open for good: a
 * slowloris holds a descriptor per connection, as long as it likes (the HTTP front drops an
 * idle one after 10 s). A session whose peer has not sent its SETTINGS within `ms` is
 * destroyed. grpc-js gives no hook for it: its HTTP/2 servers are read from the field that
 * holds them (grpc-js 1.14); false when it is not there.
 */
function deadlineHandshakes(server: grpc.Server, ms: number): boolean {
  const servers = http2ServersOf(server);
  if (servers === undefined) return false;
  for (const s of servers) {
    // With TLS the HTTP/2 session exists only once the TLS handshake is done: a connection
    // that never starts it is timed from its TCP accept (Node's own TLS limit is 120 s).
    if (s instanceof tls.Server) deadlineTls(s, ms);
    s.on('session', (session: http2.ServerHttp2Session) => {
      const timer = setTimeout(() => session.destroy(), ms);
      timer.unref();
      const done = (): void => clearTimeout(timer);
      session.once('remoteSettings', done);
      session.once('close', done);
    });
  }
  return true;
}

/** grpc-js's HTTP/2 servers (the field that holds them in grpc-js 1.14), or undefined when it is not there. */
function http2ServersOf(server: grpc.Server): Iterable<http2.Http2Server | http2.Http2SecureServer> | undefined {
  const servers = (server as unknown as { http2Servers?: Map<http2.Http2Server | http2.Http2SecureServer, unknown> }).http2Servers;
  return servers instanceof Map ? servers.keys() : undefined;
}

/**
 * Node's HTTP/2 layer keeps only the first of several `authorization` fields (a singleton
 * header) before grpc-js reads them: a C-core, Go or Java client that sends two was judged on
 * the first alone, where a proxy in front may read the other. Joined here, first, as grpc-js
 * joins other repeated metadata, so that checkCall refuses it as it does `x-api-key` twice.
 */
function joinRepeatedAuthorization(server: grpc.Server): boolean {
  const servers = http2ServersOf(server);
  if (servers === undefined) return false;
  for (const s of servers) {
    s.prependListener('stream', (_stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, raw: string[]) => {
      let values: string[] | undefined;
      for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i]!.toLowerCase() === 'authorization') (values ??= []).push(raw[i + 1]!);
      if (values !== undefined && values.length > 1) headers['authorization'] = values.join(', ');
    });
  }
  return true;
}

/** A TCP connection to a TLS server that has not finished its TLS handshake within `ms` is closed. */
function deadlineTls(s: tls.Server, ms: number): void {
  const secured = new WeakSet<Socket>();
  // A Node whose TLSSocket does not name the socket it wraps: no connection is cut (else every one would be).
  let blind = false;
  s.on('secureConnection', (t: tls.TLSSocket) => {
    // Node's TLSSocket wraps the accepted socket as _parent (not in its typings).
    const raw = (t as unknown as { _parent?: unknown })._parent;
    if (raw instanceof Socket) secured.add(raw);
    else blind = true;
  });
  s.on('connection', (raw: Socket) => {
    const timer = setTimeout(() => {
      if (!blind && !secured.has(raw)) raw.destroy();
    }, ms);
    timer.unref();
    raw.once('close', () => clearTimeout(timer));
  });
}

/**
 * The server's certificate and key, checked as a pair first: grpc-js reports a bad PEM or a key
 * that does not match only when it binds, in words that blamed GRPC_PORT.
 */
function tlsCredentials(files: { readonly certPath: string; readonly keyPath: string }): grpc.ServerCredentials {
  const cert = readFileSync(files.certPath);
  const key = readFileSync(files.keyPath);
  try {
    tls.createSecureContext({ cert, key });
  } catch (err) {
    throw new Error(`gRPC TLS: GRPC_TLS_CERT (${files.certPath}) and GRPC_TLS_KEY (${files.keyPath}) must be a PEM certificate chain and its private key: ${(err as Error).message}`);
  }
  return grpc.ServerCredentials.createSsl(null, [{ cert_chain: cert, private_key: key }], false);
}
