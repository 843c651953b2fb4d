// Ollama's POST /api/show: what a model is. The `ollama` CLI asks it before `ollama run`
// (a 404 makes it try to pull the model), Continue reads the context length from it, and
// ollama-js `show()` throws without it. A group served by an Ollama answers with that
// server's own description of its model (template, parameters, context length); any other
// group, or an Ollama that does not answer in time, with one made here from the fleet file.
import { request } from 'undici';
import type { ModelGroupConfig } from '../config/broker-config.ts';
import { upstreamTarget } from './providers.ts';

/** How long the upstream's own /api/show may take before the broker answers with its own. */
const UPSTREAM_SHOW_TIMEOUT_MS = 2000;

export async function showModel(group: ModelGroupConfig, name: string): Promise<Record<string, unknown>> {
  for (const d of group.deployments) {
    if (d.provider !== 'ollama') continue;
    // The deployment's base path kept, as the proxy keeps it (a gateway's /ollama prefix).
    const { origin, path } = upstreamTarget(d, 'chat');
    const own = await upstreamShow(origin + path.replace(/\/api\/chat$/, '/api/show'), d.model, d.apiKey);
    if (own !== undefined) return withGroupWindow(own, group);
    break;
  }
  return described(group, name);
}

async function upstreamShow(url: string, model: string, apiKey: string | undefined): Promise<Record<string, unknown> | undefined> {
  try {
    const res = await request(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(apiKey !== undefined ? { authorization: `Bearer ${apiKey}` } : {}) },
      body: JSON.stringify({ model }),
      headersTimeout: UPSTREAM_SHOW_TIMEOUT_MS,
      bodyTimeout: UPSTREAM_SHOW_TIMEOUT_MS,
      signal: AbortSignal.timeout(UPSTREAM_SHOW_TIMEOUT_MS),
    });
    if (res.statusCode !== 200) {
      await res.body.dump();
      return undefined;
    }
    const v: unknown = await res.body.json();
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The upstream's description with the group's window: a client that sizes its prompts by
 * `model_info["<arch>.context_length"]` or by the `num_ctx` of `parameters` (Continue, agents)
 * must not be told more than the broker lets through (maxContextTokens).
 */
function withGroupWindow(own: Record<string, unknown>, group: ModelGroupConfig): Record<string, unknown> {
  const max = group.maxContextTokens;
  if (max === undefined) return own;
  const over = (v: unknown): boolean => {
    const n = typeof v === 'string' ? Number(v) : v;
    return typeof n === 'number' && Number.isFinite(n) && n > max;
  };
  const info = own['model_info'];
  const clamped: Record<string, unknown> = info !== null && typeof info === 'object' && !Array.isArray(info) ? { ...(info as Record<string, unknown>) } : {};
  let seen = false;
  for (const [k, v] of Object.entries(clamped)) {
    if (!k.endsWith('.context_length')) continue;
    seen = true;
    if (over(v)) clamped[k] = max;
  }
  if (!seen) clamped[`${String(clamped['general.architecture'] ?? 'edge-broker')}.context_length`] = max;
  const out: Record<string, unknown> = { ...own, model_info: clamped };
  // "num_ctx 32768" on a line of its own, as a Modelfile's PARAMETER sets it.
  const numCtx = (text: string): string => text.replace(/^(\s*(?:PARAMETER\s+)?num_ctx\s+)(\S+)[ \t]*$/gm, (line, head: string, n: string) => (over(n) ? `${head}${max}` : line));
  if (typeof own['parameters'] === 'string') out['parameters'] = numCtx(own['parameters']);
  if (typeof own['modelfile'] === 'string') out['modelfile'] = numCtx(own['modelfile']);
  return out;
}

/**
 * When the models were last changed, as far as a client can tell: when the broker started
 * (performance.timeOrigin is the process's, the same on every data-plane thread: each thread's
 * own start time had /api/tags answer two dates by turns). The epoch (what it said before) had
 * Open WebUI and `ollama list` show every model as "56 years ago".
 */
export const LISTED_SINCE = new Date(Math.floor(performance.timeOrigin)).toISOString();

/** The group as the fleet file describes it: its context window when it names one, chat and tools. */
function described(group: ModelGroupConfig, name: string): Record<string, unknown> {
  const arch = 'edge-broker';
  return {
    license: '',
    modelfile: `# served by Edge Broker: model group ${name}\nFROM ${name}\n`,
    parameters: '',
    template: '{{ .Prompt }}',
    details: { parent_model: '', format: '', family: '', families: null, parameter_size: '', quantization_level: '' },
    model_info: { 'general.architecture': arch, ...(group.maxContextTokens !== undefined ? { [`${arch}.context_length`]: group.maxContextTokens } : {}) },
    capabilities: ['completion', 'tools'],
    modified_at: LISTED_SINCE,
  };
}
