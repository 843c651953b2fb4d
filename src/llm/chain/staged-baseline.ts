// The stream chain built the naive way, kept as the TEST ORACLE and BENCH BASELINE:
// one node:stream Transform per stage (parse → instrument → count → translate →
// encode), objects between stages, each stage parsing the JSON it needs on its own,
// a string buffer re-sliced per chunk in the parser. bench/chain.ts measures the
// compiled chain against it, and the tests hold compile.ts to the same client bytes
// and stats for every route. It serves only when BROKER_FF_COMPILED_CHAIN=false,
// which logs a warning: it costs 3-4x the CPU per stream.

import { Transform, type Readable, type TransformCallback, type Writable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { SSE_DONE, isPlainBlock } from '../codec/sse.ts';
import { ABORTED_MESSAGE, abortedFinish, finishFromOllama, ollamaHasToken, openaiChunkFinish, openaiChunkHasToken, usageFromOllama, usageFromOpenAI } from '../translate/common.ts';
import { streamErrorEvent } from '../../front/error-body.ts';
import { BrokerError } from '../../errors.ts';
import { upstreamErrorMessage, upstreamText } from '../translate/errors.ts';
import * as ollamaToOpenai from '../translate/ollama_to_openai.ts';
import * as openaiToOllama from '../translate/openai_to_ollama.ts';
import { isUsageOnlyChunk } from '../translate/openai_to_openai.ts';
import type { OllamaChatResponse, OllamaGenerateResponse, OpenAIChunk } from '../translate/types.ts';
import { KEEPALIVE_HOLD_MS, NO_REPLY, newChainStats, type ChainContext, type ChainSpec, type ChainStats } from './compile.ts';
import { looksLikeObject, MALFORMED_RUN_LIMIT, MALFORMED_RUN_MESSAGE } from './probe.ts';

/** What the parse stage hands on. */
interface Up {
  /** event: has data; raw: a block or line without data (forward as is); cont: LF completing the previous block's CRLF. */
  kind: 'event' | 'raw' | 'cont';
  data: string;
  event: string;
  raw: Buffer;
  terminated: boolean;
}

function parseObject(text: string): Record<string, unknown> | null {
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

type Look =
  | { type: 'done'; json: Record<string, unknown> | null }
  | { type: 'error'; message: string }
  | { type: 'malformed' }
  | { type: 'chunk'; json: Record<string, unknown> | null };

/** What an upstream event is; every stage asks this again for itself. */
function look(spec: ChainSpec, up: Up): Look {
  // Pass-through tests the shape only (looksLikeObject), as the compiled chain does.
  const passthrough = spec.client === spec.provider;
  if (spec.provider === 'openai') {
    if (up.event === 'error') return { type: 'error', message: upstreamErrorMessage(parseObject(up.data)) ?? up.data };
    if (up.data === '[DONE]') return { type: 'done', json: null };
    if (passthrough && !looksLikeObject(up.data)) return { type: 'malformed' };
    const j = parseObject(up.data);
    if (j === null) return passthrough ? { type: 'chunk', json: null } : { type: 'malformed' };
    // {"error": ...}, or vLLM's (before 0.10) {"object": "error", "message": ...}.
    if ((j['error'] !== undefined || j['object'] === 'error') && j['choices'] === undefined) return { type: 'error', message: upstreamErrorMessage(j) ?? 'upstream error' };
    return { type: 'chunk', json: j };
  }
  if (passthrough && !looksLikeObject(up.data)) return { type: 'malformed' };
  const j = parseObject(up.data);
  if (j === null) return passthrough ? { type: 'chunk', json: null } : { type: 'malformed' };
  if (j['error'] !== undefined) return { type: 'error', message: upstreamErrorMessage(j) ?? 'upstream error' };
  if (j['done'] === true) return { type: 'done', json: j };
  return { type: 'chunk', json: j };
}

/** Malformed events in a row; each stage keeps its own, and stops where the chain gives up. */
class MalformedRun {
  private n = 0;
  /** Counts `l`; true once the run reaches the limit. */
  over(l: Look): boolean {
    if (l.type !== 'malformed') {
      this.n = 0;
      return false;
    }
    return ++this.n >= MALFORMED_RUN_LIMIT;
  }
}

function hasToken(spec: ChainSpec, json: Record<string, unknown> | null): boolean {
  if (json === null) return false;
  return spec.provider === 'openai' ? openaiChunkHasToken(json as unknown as OpenAIChunk) : ollamaHasToken(json as unknown as OllamaChatResponse);
}

// ---- parse ----

class SseParse extends Transform {
  private readonly dec = new StringDecoder('utf8');
  private buf = '';
  private pos = 0;
  private first = true;
  private skipLF: 'none' | 'in-block' | 'after-event' = 'none';
  private data: string[] = [];
  private event = '';

  constructor() {
    super({ readableObjectMode: true });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let text = this.dec.write(chunk);
    if (text === '') return cb();
    if (this.first) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) this.pos = 1;
    }
    if (this.skipLF !== 'none') {
      const mode = this.skipLF;
      this.skipLF = 'none';
      if (text[0] === '\n') {
        text = text.slice(1);
        if (mode === 'after-event') this.push({ kind: 'cont', data: '', event: '', raw: Buffer.from('\n'), terminated: true } satisfies Up);
        else {
          this.buf += '\n';
          this.pos = this.buf.length;
        }
      }
    }
    this.buf += text;
    const re = /\r\n|\r|\n/g;
    re.lastIndex = this.pos;
    let m: RegExpExecArray | null;
    while ((m = re.exec(this.buf)) !== null) {
      const next = m.index + m[0].length;
      const crAtEnd = m[0] === '\r' && next === this.buf.length;
      const line = this.buf.slice(this.pos, m.index);
      if (line === '') {
        const raw = Buffer.from(this.buf.slice(0, next));
        this.buf = this.buf.slice(next);
        this.pos = 0;
        re.lastIndex = 0;
        const data = this.data;
        const event = this.event;
        this.data = [];
        this.event = '';
        this.push(
          (data.length > 0
            ? { kind: 'event', data: data.join('\n'), event, raw, terminated: true }
            : { kind: 'raw', data: '', event, raw, terminated: true }) satisfies Up,
        );
        if (crAtEnd) this.skipLF = 'after-event';
      } else {
        this.field(line);
        this.pos = next;
        if (crAtEnd) this.skipLF = 'in-block';
      }
    }
    cb();
  }

  private field(line: string): void {
    if (line[0] === ':') return;
    const c = line.indexOf(':');
    const name = c === -1 ? line : line.slice(0, c);
    let value = c === -1 ? '' : line.slice(c + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (name === 'data') this.data.push(value);
    else if (name === 'event') this.event = value;
  }

  override _flush(cb: TransformCallback): void {
    // An unfinished block is dropped, as the SSE spec says.
    cb();
  }
}

function blank(text: string): boolean {
  return text === '' || (text.charCodeAt(0) <= 32 && text.trim() === '');
}

class NdjsonParse extends Transform {
  private readonly dec = new StringDecoder('utf8');
  private buf = '';

  constructor() {
    super({ readableObjectMode: true });
  }

  private line(text: string, terminated: boolean): void {
    const raw = Buffer.from(terminated ? text + '\n' : text);
    const t = text.endsWith('\r') ? text.slice(0, -1) : text;
    this.push((blank(t) ? { kind: 'raw', data: '', event: '', raw, terminated } : { kind: 'event', data: t, event: '', raw, terminated }) satisfies Up);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.buf += this.dec.write(chunk);
    const lines = this.buf.split('\n');
    this.buf = lines.pop()!;
    for (const l of lines) this.line(l, true);
    cb();
  }

  override _flush(cb: TransformCallback): void {
    this.buf += this.dec.end();
    // A last line cut mid-JSON is dropped; the translate stage reports the truncation.
    if (this.buf !== '' && (blank(this.buf) || parseObject(this.buf.endsWith('\r') ? this.buf.slice(0, -1) : this.buf) !== null)) this.line(this.buf, false);
    cb();
  }
}

// ---- instrument, count ----

class InstrumentStage extends Transform {
  private finishedUp = false;
  private readonly bad = new MalformedRun();

  constructor(
    private readonly spec: ChainSpec,
    private readonly ctx: ChainContext,
    private readonly stats: ChainStats,
  ) {
    super({ objectMode: true });
  }

  override _transform(up: Up, _enc: BufferEncoding, cb: TransformCallback): void {
    if (up.kind === 'event' && !this.finishedUp) {
      const l = look(this.spec, up);
      if (this.bad.over(l) || l.type === 'error' || (l.type === 'done' && l.json === null)) this.finishedUp = true;
      else if (l.type !== 'malformed') {
        if (hasToken(this.spec, l.json)) {
          const t = this.ctx.now();
          const prev = this.stats.lastTokenAt;
          if (prev === null) {
            this.stats.firstTokenAt = t;
            this.ctx.onFirstToken?.(t);
          }
          this.stats.lastTokenAt = t;
          this.ctx.onToken?.(t, prev);
        }
        if (l.type === 'done') this.finishedUp = true;
      }
    }
    cb(null, up);
  }
}

class CountStage extends Transform {
  private finishedUp = false;
  private readonly bad = new MalformedRun();

  constructor(
    private readonly spec: ChainSpec,
    private readonly stats: ChainStats,
  ) {
    super({ objectMode: true });
  }

  override _transform(up: Up, _enc: BufferEncoding, cb: TransformCallback): void {
    if (up.kind === 'event' && !this.finishedUp) {
      const l = look(this.spec, up);
      if (this.bad.over(l) || l.type === 'error' || (l.type === 'done' && l.json === null)) this.finishedUp = true;
      else if (l.type !== 'malformed') {
        const j = l.json;
        const usage = j === null ? null : this.spec.provider === 'openai' ? usageFromOpenAI(j['usage'] as OpenAIChunk['usage']) : l.type === 'done' ? usageFromOllama(j) : null;
        const s = this.stats;
        if (usage !== null) {
          s.promptTokens = usage.promptTokens;
          s.completionTokens = usage.completionTokens;
          s.usageFromUpstream = true;
        } else if (hasToken(this.spec, j) && !s.usageFromUpstream) {
          s.completionTokens++;
        }
        if (l.type === 'done') this.finishedUp = true;
      }
    }
    cb(null, up);
  }
}

// ---- translate ----

const TRUNCATED = 'upstream stream ended before the response was complete';

class TranslateStage extends Transform {
  finishedUp = false;
  /** Something was pushed for the client. */
  private sent = false;
  /** An OpenAI chunk with a choice came (see compile.ts onlyDone). */
  private replied = false;
  private keepAliveSince = -1;
  /**
   * An upstream failure before anything was pushed (as the compiled chain's Run.held): with
   * `holdFailures`, kept here at the end instead of pushed, for the caller to write or to
   * try elsewhere; without, pushed at the end.
   */
  held: string | null = null;
  holdFailures = false;
  /** Called once when the upstream says it failed: nothing more of it needs reading. */
  onUpstreamFailed: (() => void) | null = null;
  /** An Ollama line carried tool calls (as the compiled chain's Run.ollamaTools). */
  private ollamaTools = false;
  truncated = false;
  private lastKept = false;
  private readonly bad = new MalformedRun();
  private readonly sse: openaiToOllama.SseWriter;
  private readonly nd: ollamaToOpenai.NdjsonWriter;

  constructor(
    private readonly spec: ChainSpec,
    private readonly ctx: ChainContext,
    private readonly stats: ChainStats,
  ) {
    super({ objectMode: true });
    this.sse = openaiToOllama.sseWriter(ctx);
    this.nd = ollamaToOpenai.ndjsonWriter(ctx);
  }

  private get passthrough(): boolean {
    return this.spec.client === this.spec.provider;
  }

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk !== null) this.sent = true;
    return super.push(chunk, encoding);
  }

  private failWith(message: string, code: string): string {
    this.finishedUp = true;
    this.lastKept = false;
    this.stats.error = { code, message };
    return streamErrorEvent(this.spec.client as 'openai' | 'ollama', message, code, this.ctx.requestId ?? this.ctx.id);
  }

  private holdKeepAlive(): boolean {
    if (this.sent) return false;
    const now = this.ctx.now();
    if (this.keepAliveSince < 0) this.keepAliveSince = now;
    return now - this.keepAliveSince < KEEPALIVE_HOLD_MS;
  }

  /** The upstream failed: its error event now, or held back while nothing was sent. */
  private failUp(upstreamMessage: string): void {
    const text = this.failWith(upstreamText(upstreamMessage, this.ctx.secrets ?? []), 'upstream_error');
    if (this.sent) this.push(text);
    else this.held = text;
    this.onUpstreamFailed?.();
  }

  private openaiDone(): string | Buffer {
    if (this.spec.client === 'openai') return SSE_DONE;
    return this.spec.kind === 'chat' ? ollamaToOpenai.chatDone(this.nd) : ollamaToOpenai.completionDone(this.nd);
  }

  override _transform(up: Up, _enc: BufferEncoding, cb: TransformCallback): void {
    const spec = this.spec;
    if (up.kind === 'cont') {
      if (this.passthrough && this.lastKept) this.push(up.raw);
      return cb();
    }
    if (this.finishedUp) return cb();
    if (up.kind === 'raw') {
      // An SSE block without data that is not a comment or field is garbage (NDJSON blank lines are not).
      if (this.passthrough && this.spec.provider === 'openai' && !isPlainBlock(up.raw)) {
        this.stats.malformed++;
        this.lastKept = false;
        if (this.bad.over({ type: 'malformed' })) this.failUp(MALFORMED_RUN_MESSAGE);
        return cb();
      }
      // A keep-alive before anything was sent would commit the reply (see compile.ts holdKeepAlive).
      if (this.passthrough && !this.holdKeepAlive()) {
        this.push(up.raw);
        this.lastKept = true;
      }
      return cb();
    }
    this.stats.chunks++;
    const l = look(spec, up);
    if (l.type === 'malformed') {
      // Dropped and counted, never forwarded; a run of them ends the stream.
      this.stats.malformed++;
      this.lastKept = false;
      if (this.bad.over(l)) this.failUp(MALFORMED_RUN_MESSAGE);
      return cb();
    }
    this.bad.over(l);
    if (l.type === 'error') {
      this.failUp(l.message);
      return cb();
    }
    if (spec.provider === 'openai') {
      if (l.type === 'done' && !this.replied && !this.sent) {
        this.failUp(NO_REPLY);
        return cb();
      }
      if (l.type === 'done') {
        this.stats.sawTerminal = true;
        this.finishedUp = true;
        if (this.passthrough) {
          this.push(up.raw);
          this.lastKept = true;
        } else this.push(this.openaiDone());
        return cb();
      }
      const chunk = l.json as unknown as OpenAIChunk | null;
      if (chunk !== null) {
        if (!isUsageOnlyChunk(chunk)) this.replied = true;
        const f = openaiChunkFinish(chunk);
        // The server cut the generation: a translated client's API has no word for it (compile.ts).
        if (!this.passthrough && abortedFinish(f)) {
          this.failUp(ABORTED_MESSAGE);
          return cb();
        }
        if (f !== null) {
          this.stats.finishReason = f;
          this.stats.sawTerminal = true;
        }
      }
      if (this.passthrough) {
        if (chunk !== null && isUsageOnlyChunk(chunk) && !this.ctx.includeUsage) this.lastKept = false;
        else {
          this.push(up.raw);
          this.lastKept = true;
        }
      } else {
        const out = spec.kind === 'chat' ? ollamaToOpenai.chatChunk(this.nd, chunk!) : ollamaToOpenai.completionChunk(this.nd, chunk!);
        if (out !== '') this.push(out);
      }
      return cb();
    }
    // Ollama provider
    const calls = (l.json?.['message'] as { tool_calls?: unknown } | undefined)?.tool_calls;
    if (Array.isArray(calls) && calls.length > 0) this.ollamaTools = true;
    if (l.type === 'done') {
      this.stats.sawTerminal = true;
      this.stats.finishReason = finishFromOllama(l.json!['done_reason'] as string | undefined, this.ollamaTools);
      this.finishedUp = true;
    }
    if (this.passthrough) {
      this.push(up.raw);
      if (!up.terminated) this.push('\n');
    } else {
      const out =
        spec.kind === 'chat'
          ? openaiToOllama.chatLine(this.sse, l.json as unknown as OllamaChatResponse)
          : openaiToOllama.generateLine(this.sse, l.json as unknown as OllamaGenerateResponse);
      if (out !== '') this.push(out);
    }
    cb();
  }

  override _flush(cb: TransformCallback): void {
    if (!this.finishedUp) {
      if (this.stats.sawTerminal) this.push(this.openaiDone());
      else {
        this.truncated = true;
        this.failUp(TRUNCATED);
      }
      this.finishedUp = true;
    }
    if (this.held !== null && !this.holdFailures) {
      this.push(this.held);
      this.held = null;
    }
    cb();
  }

  fail(message: string, code: string): string {
    if (this.held !== null) {
      const h = this.held;
      this.held = null;
      return h;
    }
    if (this.finishedUp) return '';
    return this.failWith(message, code);
  }
}

// ---- encode ----

class EncodeStage extends Transform {
  constructor() {
    super({ writableObjectMode: true });
  }

  override _transform(piece: string | Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    cb(null, typeof piece === 'string' ? Buffer.from(piece) : piece);
  }
}

// ---- assembly ----

export interface Pipeline {
  /** Write upstream bytes here; end() it when the upstream ends. */
  readonly input: Writable;
  /** Client bytes come out here. */
  readonly output: Readable;
  readonly stats: ChainStats;
  readonly truncated: boolean;
  fail(message: string, code: string): string;
  /**
   * Keep a failure before anything was sent out of the output (`held` has it once the output
   * ended), and call `onFailed` when the upstream says it failed (the caller stops reading it).
   */
  holdFailures(onFailed: () => void): void;
  readonly held: string | null;
}

export function createStagedBaseline(spec: ChainSpec, ctx: ChainContext): Pipeline {
  // The baseline bench:chain compares against knows the two original client APIs only.
  if (spec.client !== 'openai' && spec.client !== 'ollama') throw new BrokerError('internal', `the staged baseline has no ${spec.client} client: use the compiled chain`);
  const stats = newChainStats();
  const parse = spec.provider === 'openai' ? new SseParse() : new NdjsonParse();
  const translate = new TranslateStage(spec, ctx, stats);
  const stages: Transform[] = [parse];
  if (spec.instrument) stages.push(new InstrumentStage(spec, ctx, stats));
  if (spec.countTokens) stages.push(new CountStage(spec, stats));
  stages.push(translate, new EncodeStage());
  for (let i = 0; i + 1 < stages.length; i++) stages[i]!.pipe(stages[i + 1]!);
  return {
    input: parse,
    output: stages[stages.length - 1]!,
    stats,
    get truncated() {
      return translate.truncated;
    },
    fail: (message, code) => translate.fail(message, code),
    holdFailures(onFailed) {
      translate.holdFailures = true;
      translate.onUpstreamFailed = onFailed;
    },
    get held() {
      return translate.held;
    },
  };
}

/** Feed `chunks` through a fresh pipeline (respecting backpressure) and collect everything it writes. */
export async function runPipeline(
  spec: ChainSpec,
  ctx: ChainContext,
  chunks: Iterable<Uint8Array>,
): Promise<{ output: Buffer; stats: ChainStats; truncated: boolean }> {
  const p = createStagedBaseline(spec, ctx);
  const parts: Buffer[] = [];
  p.output.on('data', (b: Buffer) => parts.push(b));
  const finished = new Promise<void>((resolve, reject) => {
    p.output.once('end', resolve);
    p.output.once('error', reject);
  });
  for (const c of chunks) {
    if (!p.input.write(c)) await new Promise<void>((resolve) => p.input.once('drain', resolve));
  }
  p.input.end();
  await finished;
  return { output: Buffer.concat(parts), stats: p.stats, truncated: p.truncated };
}

