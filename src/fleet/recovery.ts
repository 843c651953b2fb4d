// Recovery tests: one tiny real request (one output token) to a server × model, outside
// routing, to see whether it answers again. Failed tests are kept as history per server,
// with an analysis by error kind.
import { request } from 'undici';
import type { ServerConfig } from '../config/broker-config.ts';
import { PROVIDERS, upstreamTarget } from '../llm/providers.ts';

export type RecoveryErrorKind = 'connect' | 'timeout' | 'http_429' | 'http_4xx' | 'http_5xx' | 'invalid_reply';

export type RecoveryResult = { readonly ok: true; readonly ms: number } | { readonly ok: false; readonly ms: number; readonly kind: RecoveryErrorKind; readonly error: string };

export async function recoveryTest(server: ServerConfig, model: string, timeoutMs: number): Promise<RecoveryResult> {
  const started = performance.now();
  const ms = (): number => Math.round(performance.now() - started);
  const { origin, path } = upstreamTarget(server, 'chat');
  const messages = [{ role: 'user', content: 'ping' }];
  const body = server.provider === 'openai' ? { model, messages, max_tokens: 1, stream: false } : { model, messages, stream: false, options: { num_predict: 1 } };
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const res = await request(origin + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...PROVIDERS[server.provider].headers(server) },
      body: JSON.stringify(body),
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal,
    });
    const text = await res.body.text();
    if (res.statusCode === 429) return { ok: false, ms: ms(), kind: 'http_429', error: `HTTP 429: ${text.slice(0, 200)}` };
    if (res.statusCode >= 500) return { ok: false, ms: ms(), kind: 'http_5xx', error: `HTTP ${res.statusCode}: ${text.slice(0, 200)}` };
    if (res.statusCode >= 300) return { ok: false, ms: ms(), kind: 'http_4xx', error: `HTTP ${res.statusCode}: ${text.slice(0, 200)}` };
    try {
      JSON.parse(text);
    } catch {
      return { ok: false, ms: ms(), kind: 'invalid_reply', error: 'the reply is not JSON' };
    }
    return { ok: true, ms: ms() };
  } catch (err) {
    const e = err as Error & { code?: string };
    if (signal.aborted || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT') return { ok: false, ms: ms(), kind: 'timeout', error: `timed out after ${timeoutMs} ms` };
    return { ok: false, ms: ms(), kind: 'connect', error: e.code ?? e.message };
  }
}

export interface RecoveryFailure {
  readonly at: string;
  readonly model: string;
  readonly kind: RecoveryErrorKind;
  readonly error: string;
  readonly ms: number;
}

/** Recovery tests of one server: counts, and its failures, newest last, at most `keep`. */
export class RecoveryRecord {
  tests = 0;
  failures = 0;
  lastSuccessAt = 0;
  lastFailureAt = 0;
  readonly history: RecoveryFailure[] = [];

  constructor(private readonly keep: number) {}

  add(model: string, r: RecoveryResult, now: number): void {
    this.tests++;
    if (r.ok) {
      this.lastSuccessAt = now;
      return;
    }
    this.failures++;
    this.lastFailureAt = now;
    this.history.push({ at: new Date(now).toISOString(), model, kind: r.kind, error: r.error, ms: r.ms });
    if (this.history.length > this.keep) this.history.splice(0, this.history.length - this.keep);
  }

  analysis(now: number): { byKind: Record<string, number>; byModel: Record<string, number>; msSinceLastSuccess: number | null; lastSuccessAt: string | null; mostCommon: string | null } {
    const byKind: Record<string, number> = {};
    const byModel: Record<string, number> = {};
    for (const f of this.history) {
      byKind[f.kind] = (byKind[f.kind] ?? 0) + 1;
      byModel[f.model] = (byModel[f.model] ?? 0) + 1;
    }
    const mostCommon = Object.entries(byKind).sort((a, b) => b[1] - a[1])[0]?.[0] ?? null;
    return {
      byKind,
      byModel,
      msSinceLastSuccess: this.lastSuccessAt > 0 ? now - this.lastSuccessAt : null,
      lastSuccessAt: this.lastSuccessAt > 0 ? new Date(this.lastSuccessAt).toISOString() : null,
      mostCommon,
    };
  }
}
