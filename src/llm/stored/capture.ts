// The Response a /v1/responses client got, read off its reply as it leaves: a whole reply's
// JSON, or a stream's terminal event (response.completed or response.incomplete carries the
// whole Response). The same for every way a reply is made (a chat upstream's translated, a
// Responses upstream's passed through, a cache hit's replay), so none of them needs to know.
import type { ReplySink } from '../../front/reply.ts';

/** Bytes of a stream kept to find its terminal event in; a longer reply is not stored. */
const MAX_CAPTURE_BYTES = 16 * 1024 * 1024;

const TERMINAL = new Set(['response.completed', 'response.incomplete']);

function text(chunk: string | Uint8Array): string {
  return typeof chunk === 'string' ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('utf8');
}

function parseObject(s: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(s) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The Response of a stream: its last data line, when that is a terminal event. A failed stream (response.failed, error) has none. */
export function streamedResponse(body: string): Record<string, unknown> | undefined {
  const at = body.lastIndexOf('\ndata: ');
  const start = at === -1 ? (body.startsWith('data: ') ? 6 : -1) : at + 7;
  if (start === -1) return undefined;
  const end = body.indexOf('\n', start);
  const event = parseObject(body.slice(start, end === -1 ? undefined : end));
  if (event === undefined || !TERMINAL.has(event['type'] as string)) return undefined;
  const r = event['response'];
  return r !== null && typeof r === 'object' ? (r as Record<string, unknown>) : undefined;
}

/** A Response that may be continued: one with an id, finished (completed or incomplete). */
function keepable(r: Record<string, unknown> | undefined): r is Record<string, unknown> & { id: string } {
  return r !== undefined && typeof r['id'] === 'string' && r['id'] !== '' && (r['status'] === 'completed' || r['status'] === 'incomplete');
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
    const r = parseObject(s);
    return r !== undefined && sayPrevious(r, previous) ? JSON.stringify(r) : chunk;
  }
  let changed = false;
  const lines = s.split('\n').map((line) => {
    if (!line.startsWith('data: ') || !line.includes('"response"')) return line;
    const e = parseObject(line.slice(6));
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
 */
export function capturing(sink: ReplySink, keep: ((response: Record<string, unknown> & { id: string }) => void) | null, previous: string | null): ReplySink {
  let parts: string[] | null = keep === null ? null : [];
  let bytes = 0;
  let status = 0;
  const echo = (chunk: string | Uint8Array, stream: boolean): string | Uint8Array => (previous === null ? chunk : echoPrevious(chunk, previous, stream));
  return new Proxy(sink, {
    get(target, prop) {
      switch (prop) {
        case 'send':
          // Kept before the reply leaves: the client's next turn, on another replica too, finds it.
          return (s: number, headers: Readonly<Record<string, string>>, raw: string | Uint8Array) => {
            const streamed = (headers['content-type'] ?? '').startsWith('text/event-stream');
            const body = s === 200 ? echo(raw, streamed) : raw;
            if (keep !== null && s === 200 && !target.aborted) {
              // A cache hit replays a stream in one write: its terminal event has the Response.
              const r = streamed ? streamedResponse(text(body)) : parseObject(text(body));
              if (keepable(r)) keep(r);
            }
            target.send(s, headers, body);
          };
        case 'start':
          return (s: number, headers: Readonly<Record<string, string>>) => {
            status = s;
            target.start(s, headers);
          };
        case 'write':
          return (raw: string | Uint8Array) => {
            const chunk = status === 200 ? echo(raw, true) : raw;
            if (parts !== null) {
              bytes += chunk.length;
              if (bytes > MAX_CAPTURE_BYTES) parts = null;
              else parts.push(text(chunk));
            }
            return target.write(chunk);
          };
        case 'end':
          return (raw?: string | Uint8Array) => {
            const chunk = raw !== undefined && status === 200 ? echo(raw, true) : raw;
            if (chunk !== undefined && parts !== null) parts.push(text(chunk));
            if (keep !== null && status === 200 && parts !== null && !target.aborted) {
              const r = streamedResponse(parts.join(''));
              if (keepable(r)) keep(r);
            }
            parts = null;
            target.end(chunk);
          };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
    set(target, prop, value) {
      return Reflect.set(target, prop, value, target);
    },
  });
}
