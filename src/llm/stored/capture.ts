// The Response a /v1/responses client got, read off its reply as it leaves: a whole reply's
// JSON, or a stream's terminal event (response.completed or response.incomplete carries the
// whole Response). The same for every way a reply is made (a chat upstream's translated, a
// Responses upstream's passed through, a cache hit's replay), so none of them needs to know.
import type { ReplySink } from '../../front/reply.ts';
import { tryParse } from '../chain/probe.ts';

/** The longest event held while it arrives in pieces (a Response's terminal event carries the whole reply). */
const MAX_EVENT_CHARS = 64 * 1024 * 1024;

const TERMINAL = new Set(['response.completed', 'response.incomplete']);

function text(chunk: string | Uint8Array): string {
  return typeof chunk === 'string' ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('utf8');
}

/**
 * The Response of a stream: its terminal event's (response.completed or .incomplete), when
 * that is among its last events (after it, at most a `[DONE]` some servers add). A failed
 * stream (response.failed, error) has none.
 */
export function streamedResponse(body: string): Record<string, unknown> | undefined {
  let end = body.length;
  for (let seen = 0; seen < 3; seen++) {
    const at = body.lastIndexOf('data: ', end - 1);
    if (at === -1) return undefined;
    if (at === 0 || body[at - 1] === '\n') {
      const lineEnd = body.indexOf('\n', at);
      const event = tryParse(body.slice(at + 6, lineEnd === -1 || lineEnd > end ? end : lineEnd));
      if (event !== null) {
        if (!TERMINAL.has(event['type'] as string)) return undefined;
        const r = event['response'];
        return r !== null && typeof r === 'object' ? (r as Record<string, unknown>) : undefined;
      }
    }
    end = at;
  }
  return undefined;
}

/**
 * An id that names one Response: ours (32 hex), OpenAI's, vLLM's (a UUID's worth). A
 * `responses: true` server that makes short ones (Ollama's `resp_<up to 6 digits>`) repeats
 * them: kept under one, a conversation would continue another's.
 */
const UNIQUE_ID = /^[A-Za-z0-9_-]{21,}$/;

/** A Response that may be continued: finished (completed or incomplete), with an id that names it alone. */
function keepable(r: Record<string, unknown> | undefined): r is Record<string, unknown> & { id: string } {
  return r !== undefined && typeof r['id'] === 'string' && UNIQUE_ID.test(r['id']) && (r['status'] === 'completed' || r['status'] === 'incomplete');
}

/** A Response (a whole reply's, or an event's `response`) that does not say `previous`, saying it. */
function sayPrevious(r: Record<string, unknown>, previous: string): boolean {
  if (typeof r['previous_response_id'] === 'string' || typeof r['id'] !== 'string') return false;
  r['previous_response_id'] = previous;
  return true;
}

/**
 * A `responses: true` deployment's reply to a continuation says previous_response_id (it was
 * sent the conversation, not the id): its Response, or its events' (each SSE data line whose
 * `response` does not say it). Replies that say it already (the broker's own) pass as they are.
 */
function echoPrevious(chunk: string | Uint8Array, previous: string, stream: boolean): string | Uint8Array {
  const s = text(chunk);
  if (!s.includes('"response') && !s.includes('"id"')) return chunk;
  if (!stream) {
    const r = tryParse(s);
    return r !== null && sayPrevious(r, previous) ? JSON.stringify(r) : chunk;
  }
  let changed = false;
  const lines = s.split('\n').map((line) => {
    if (!line.startsWith('data: ') || !line.includes('"response"')) return line;
    const e = tryParse(line.slice(6));
    const r = e?.['response'];
    if (r === null || typeof r !== 'object' || !sayPrevious(r as Record<string, unknown>, previous)) return line;
    changed = true;
    return 'data: ' + JSON.stringify(e);
  });
  return changed ? lines.join('\n') : chunk;
}

/**
 * `sink`, with `keep` called once with the Response a 200 reply carried when it ended cleanly
 * (null when the client said `store: false`: nothing kept). `previous`: the
 * previous_response_id the route resolved, said where a Response does not (echoPrevious).
 * A stream's Response is kept from the write that carries its terminal event, before that
 * event reaches the client (which may continue at once, on another connection); only the
 * text after the last whole event is held between writes.
 */
export function capturing(sink: ReplySink, keep: ((response: Record<string, unknown> & { id: string }) => void) | null, previous: string | null): ReplySink {
  let status = 0;
  let kept = keep === null;
  /** A stream's unfinished event, from the last writes. */
  let carry = '';
  const echo = (chunk: string | Uint8Array, stream: boolean): string | Uint8Array => (previous === null ? chunk : echoPrevious(chunk, previous, stream));
  const look = (chunk: string | Uint8Array): void => {
    if (kept || status !== 200 || sink.aborted) return;
    const s = carry + text(chunk);
    const cut = s.lastIndexOf('\n\n');
    if (cut !== -1 && (s.includes('"response.completed"') || s.includes('"response.incomplete"'))) {
      const r = streamedResponse(s.slice(0, cut));
      if (keepable(r)) {
        kept = true;
        keep!(r);
        return;
      }
    }
    carry = cut === -1 ? s : s.slice(cut + 2);
    // No event is this long: not a stream to keep.
    if (carry.length > MAX_EVENT_CHARS) kept = true;
  };
  const send = (s: number, headers: Readonly<Record<string, string>>, raw: string | Uint8Array): void => {
    const streamed = (headers['content-type'] ?? '').startsWith('text/event-stream');
    const body = s === 200 ? echo(raw, streamed) : raw;
    // Kept before the reply leaves: the client's next turn, on another replica too, finds it.
    // A cache hit replays a stream in one write: its terminal event has the Response.
    if (keep !== null && s === 200 && !sink.aborted) {
      const r = streamed ? streamedResponse(text(body)) : (tryParse(text(body)) ?? undefined);
      if (keepable(r)) keep(r);
    }
    sink.send(s, headers, body);
  };
  const start = (s: number, headers: Readonly<Record<string, string>>): void => {
    status = s;
    sink.start(s, headers);
  };
  const write = (raw: string | Uint8Array): boolean => {
    const chunk = status === 200 ? echo(raw, true) : raw;
    look(chunk);
    return sink.write(chunk);
  };
  const end = (raw?: string | Uint8Array): void => {
    const chunk = raw !== undefined && status === 200 ? echo(raw, true) : raw;
    if (chunk !== undefined) look(chunk);
    carry = '';
    sink.end(chunk);
  };
  const own: Record<string | symbol, unknown> = { send, start, write, end };
  return new Proxy(sink, {
    get(target, prop) {
      if (prop in own) return own[prop];
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
    set(target, prop, value) {
      return Reflect.set(target, prop, value, target);
    },
  });
}
