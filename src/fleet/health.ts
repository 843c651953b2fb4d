// Active health checks: one GET per server per interval, bounded by a timeout. The same
// call lists the server's models (/api/tags for Ollama, /v1/models for OpenAI-compatible
// servers); Ollama's /api/ps also says which models are loaded now (warm-first routing).
import { request } from 'undici';
import type { ServerConfig } from '../config/broker-config.ts';
import { PROVIDERS, upstreamTarget } from '../llm/providers.ts';

export type CheckResult =
  | { readonly ok: true; readonly models: readonly string[]; readonly loaded: readonly string[] | null }
  | { readonly ok: false; readonly error: string };

async function getJson(server: ServerConfig, path: string, signal: AbortSignal, timeoutMs: number): Promise<unknown> {
  const { origin } = upstreamTarget(server, 'models');
  const res = await request(origin + path, { method: 'GET', headers: PROVIDERS[server.provider].headers(server), headersTimeout: timeoutMs, bodyTimeout: timeoutMs, signal });
  if (res.statusCode !== 200) {
    await res.body.dump();
    throw new Error(`HTTP ${res.statusCode} from ${path}`);
  }
  return res.body.json();
}

function names(list: unknown, keys: readonly string[]): string[] {
  if (!Array.isArray(list)) throw new Error('the model list is not a list');
  const out: string[] = [];
  for (const m of list) {
    const v = keys.map((k) => (m as Record<string, unknown>)?.[k]).find((x) => typeof x === 'string');
    if (typeof v === 'string') out.push(v);
  }
  return out;
}

export async function checkServer(server: ServerConfig, timeoutMs: number): Promise<CheckResult> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const { path } = upstreamTarget(server, 'models');
    const listed = await getJson(server, path, signal, timeoutMs);
    if (server.provider === 'openai') return { ok: true, models: names((listed as { data?: unknown }).data, ['id']), loaded: null };
    const models = names((listed as { models?: unknown }).models, ['name', 'model']);
    // Loaded models are a bonus: a server that lists models but not /api/ps is still healthy.
    let loaded: string[] | null = null;
    try {
      loaded = names(((await getJson(server, '/api/ps', signal, timeoutMs)) as { models?: unknown }).models, ['name', 'model']);
    } catch {
      loaded = null;
    }
    return { ok: true, models, loaded };
  } catch (err) {
    const e = err as Error & { code?: string };
    return { ok: false, error: signal.aborted ? `timed out after ${timeoutMs} ms` : (e.code ?? e.message) };
  }
}
