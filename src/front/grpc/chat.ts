// edge_broker.v1.ChatService: Chat and Complete, server streaming. A call is read into
// an OpenAI-shaped body and the one typed request (readLlmRequest), then takes the
// HTTP path from there: rate limit, admission (QoS, priority, label, quotas), the
// scheduler's lease (capacity, queue, fleet routing), the proxy and its compiled chain,
// whose last stage is the gRPC encoder (LlmRequest.encoder = 'grpc').
import type { ServerWritableStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import { BrokerError } from '../../errors.ts';
import type { FleetSource } from '../../fleet/fleet.ts';
import { HOW_TO_CONFIGURE } from '../../config/broker-config.ts';
import type { Logger } from '../../obs/logger.ts';
import type { LlmProxy } from '../../llm/proxy.ts';
import type { Admission } from '../../llm/routes.ts';
import { readLlmRequest, type LlmRequest, type PromptLimits } from '../../llm/request.ts';
import type { ActiveCalls } from './active.ts';
import { brokerRequestOf, checkCall, GrpcStreamSink, type CallGuards } from './call.ts';

export interface ChatDeps extends CallGuards {
  readonly source: FleetSource;
  readonly admission: Admission;
  readonly proxy: LlmProxy;
  readonly limits: PromptLimits;
  readonly accessLog: Logger;
  readonly calls: ActiveCalls;
}

// The request messages as proto-loader decodes them (keepCase, no defaults: unset is undefined).
interface ChatMessageMsg {
  role?: string;
  content?: string;
  name?: string;
}
interface OptionsMsg {
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  stop?: string[];
  seed?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  user?: string;
}
export interface ChatRequestMsg {
  model?: string;
  messages?: ChatMessageMsg[];
  options?: OptionsMsg;
}
export interface CompleteRequestMsg {
  model?: string;
  prompt?: string;
  options?: OptionsMsg;
  suffix?: string;
}

function invalid(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

function range(v: number | undefined, field: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isFinite(v) || v < min || v > max) throw invalid(field, `must be between ${min} and ${max}`);
  return v;
}

/** GenerateOptions as OpenAI body fields (unset ones absent). */
function optionsBody(o: OptionsMsg | undefined): Record<string, unknown> {
  if (o === undefined) return {};
  const out: Record<string, unknown> = {};
  if (o.max_tokens !== undefined) out.max_tokens = o.max_tokens;
  const set = (k: string, v: number | undefined): void => {
    if (v !== undefined) out[k] = v;
  };
  set('temperature', range(o.temperature, 'options.temperature', 0, 2));
  set('top_p', range(o.top_p, 'options.top_p', 0, 1));
  set('presence_penalty', range(o.presence_penalty, 'options.presence_penalty', -2, 2));
  set('frequency_penalty', range(o.frequency_penalty, 'options.frequency_penalty', -2, 2));
  // int64 on the wire, read as a JS number: past 2^53 it arrives rounded (9223372036854775807 would go
  // upstream as 9223372036854776000, above int64's range), so it is refused rather than changed.
  if (o.seed !== undefined && !Number.isSafeInteger(o.seed)) throw invalid('options.seed', `must be between ${-Number.MAX_SAFE_INTEGER} and ${Number.MAX_SAFE_INTEGER}`);
  set('seed', o.seed);
  if (o.stop !== undefined && o.stop.length > 0) {
    if (o.stop.length > 4) throw invalid('options.stop', 'holds at most 4 sequences');
    out.stop = o.stop;
  }
  if (o.user !== undefined && o.user !== '') out.user = o.user;
  return out;
}

export function chatBody(m: ChatRequestMsg): Record<string, unknown> {
  const messages = m.messages ?? [];
  if (messages.length === 0) throw invalid('messages', 'must hold at least one message');
  return {
    model: m.model ?? '',
    messages: messages.map((x, i) => {
      if (x.role === undefined || x.role === '') throw invalid(`messages[${i}].role`, 'is required');
      return x.name !== undefined && x.name !== '' ? { role: x.role, content: x.content ?? '', name: x.name } : { role: x.role, content: x.content ?? '' };
    }),
    stream: true,
    ...optionsBody(m.options),
  };
}

export function completeBody(m: CompleteRequestMsg): Record<string, unknown> {
  if (m.prompt === undefined || m.prompt === '') throw invalid('prompt', 'is required');
  return { model: m.model ?? '', prompt: m.prompt, ...(m.suffix !== undefined && m.suffix !== '' ? { suffix: m.suffix } : {}), stream: true, ...optionsBody(m.options) };
}

export function chatService(deps: ChatDeps): UntypedServiceImplementation {
  const serve = async (call: ServerWritableStream<ChatRequestMsg & CompleteRequestMsg, Uint8Array>, kind: 'chat' | 'completion'): Promise<void> => {
    const req = brokerRequestOf(call, true, { recorder: deps.recorder, api: kind === 'chat' ? 'grpc.chat' : 'grpc.completion' });
    const sink = new GrpcStreamSink(call as ServerWritableStream<unknown, Uint8Array>, req, deps.accessLog, deps.recorder);
    // Past shutdown's grace period: UNAVAILABLE after what was sent, and the upstream request aborted.
    // The upstream request is aborted with that reason: recorded as the shutdown's cut, not the client's.
    const untrack = deps.calls.track(() => {
      const err = new BrokerError('shutting_down', 'the broker shut down before the reply was complete');
      sink.endWithError(err);
      sink.cancelled(err);
    });
    try {
      await checkCall(deps, req);
      const fleet = await deps.source.current();
      if (fleet === undefined) throw new BrokerError('upstream_unavailable', HOW_TO_CONFIGURE);
      const body = kind === 'chat' ? chatBody(call.request) : completeBody(call.request);
      const r: LlmRequest = { ...readLlmRequest(req, 'openai', kind, body, deps.limits), encoder: 'grpc' };
      const group = fleet.groups.get(r.model);
      if (group === undefined) throw new BrokerError('model_not_found', `model ${r.model} is not served here; available: ${[...new Set([...fleet.groups.values()].map((g) => g.name))].join(', ') || 'none'}`);
      if (sink.aborted) return;
      const a = deps.admission.admit(r, group);
      const admitted = a instanceof Promise ? await a : a;
      if (sink.aborted) {
        admitted.keyReservation?.cancel();
        return;
      }
      await deps.proxy.run(admitted, group, sink, undefined, fleet.groups);
      // A run that returns without replying is a bug; never leave the client hanging.
      if (!sink.finished && !sink.aborted) sink.fail(new BrokerError('internal', 'the request ended without a reply'));
    } catch (err) {
      sink.fail(err);
    } finally {
      untrack();
    }
  };
  return {
    Chat: (call: ServerWritableStream<ChatRequestMsg & CompleteRequestMsg, Uint8Array>) => void serve(call, 'chat'),
    Complete: (call: ServerWritableStream<ChatRequestMsg & CompleteRequestMsg, Uint8Array>) => void serve(call, 'completion'),
  };
}
