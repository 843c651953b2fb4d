// What request tracking records of one request (docs/tracking.md). The front opens a
// RequestFacts for a tracked route; the stages the request passes fill in what they
// learn (model, deployment, key, label, tokens, timings); the front turns it into one
// row when the request reaches its single terminal outcome. Plain data: it may cross
// a thread inside a forwarded request.

/** Filled in along the request path; every field optional (a request refused early knows little). */
export interface RequestFacts {
  /** What was called: `openai.chat`, `openai.completion`, `ollama.chat`, `ollama.generate`, `infer`, `oip.infer`, `grpc.*` (docs/tracking.md). */
  api: string;
  /** Model group (LLM) or inference model. */
  model?: string | undefined;
  /** Inference arm (A/B) and its model version. */
  arm?: string | undefined;
  /** LLM deployment that served the last attempt. */
  deployment?: string | undefined;
  /** The model group whose deployment that is, when a fallback group served it (`model` stays the group asked for): its price. */
  servedGroup?: string | undefined;
  keyId?: string | undefined;
  subject?: string | undefined;
  tier?: string | undefined;
  label?: string | undefined;
  priority?: number | undefined;
  /** The terminal outcome as the metrics name it (llm_requests_total's reason); else derived from the status. */
  outcome?: string | undefined;
  promptTokens?: number | undefined;
  completionTokens?: number | undefined;
  /** Output tokens predicted at admission, when output prediction ran. */
  predictedTokens?: number | undefined;
  queueMs?: number | undefined;
  ttftMs?: number | undefined;
  upstreamMs?: number | undefined;
  retries?: number | undefined;
}

/** One row of brk_tracking.completion_request, as it crosses to the writer (cost is added there). */
export interface TrackRow {
  readonly id: string;
  /** Epoch ms. */
  readonly createdAt: number;
  readonly finishedAt: number;
  readonly protocol: 'http' | 'grpc';
  readonly api: string;
  readonly route: string;
  readonly model: string | null;
  readonly arm: string | null;
  readonly deployment: string | null;
  /** Not a column: the fallback group that served the request, priced in its stead (costOf). */
  readonly servedGroup: string | null;
  readonly keyId: string | null;
  readonly subject: string | null;
  readonly tier: string | null;
  readonly label: string | null;
  readonly priority: number | null;
  readonly outcome: string;
  readonly status: number;
  readonly errorCode: string | null;
  readonly promptTokens: number | null;
  readonly completionTokens: number | null;
  readonly predictedTokens: number | null;
  readonly queueMs: number | null;
  readonly ttftMs: number | null;
  readonly totalMs: number;
  readonly upstreamMs: number | null;
  readonly retries: number;
}

/** The outcome of a row: the stage's own when it named one, else from how the request ended (gRPC: any code but 0 OK failed). */
export function outcomeOf(facts: RequestFacts, status: number, errorCode: string | undefined, aborted: boolean, protocol: 'http' | 'grpc' = 'http'): string {
  if (facts.outcome !== undefined) return facts.outcome;
  if (aborted) return 'aborted';
  if (protocol === 'grpc' ? status === 0 : status < 400) return 'ok';
  return errorCode ?? 'error';
}

/**
 * A text a client chose, cut to what a row keeps: a 7 MB model name (any client may send one;
 * its 404 was still a row) made each buffered row megabytes, and a batch too large to encode.
 */
function cut(v: string | undefined, max = TEXT_CHARS): string | null {
  if (v === undefined) return null;
  return v.length <= max ? v : v.slice(0, max);
}

/** The longest text a row keeps of a client-chosen value (model names are far shorter). */
const TEXT_CHARS = 256;

export function rowOf(facts: RequestFacts, id: string, protocol: 'http' | 'grpc', route: string, status: number, errorCode: string | undefined, aborted: boolean, totalMs: number, now: number): TrackRow {
  return {
    id,
    createdAt: now - totalMs,
    finishedAt: now,
    protocol,
    api: facts.api,
    route,
    model: cut(facts.model),
    arm: facts.arm ?? null,
    deployment: facts.deployment ?? null,
    servedGroup: facts.servedGroup ?? null,
    keyId: facts.keyId ?? null,
    subject: cut(facts.subject),
    tier: facts.tier ?? null,
    label: cut(facts.label),
    priority: facts.priority ?? null,
    outcome: outcomeOf(facts, status, errorCode, aborted, protocol),
    status,
    errorCode: errorCode ?? null,
    promptTokens: facts.promptTokens ?? null,
    completionTokens: facts.completionTokens ?? null,
    predictedTokens: facts.predictedTokens ?? null,
    queueMs: facts.queueMs ?? null,
    ttftMs: facts.ttftMs ?? null,
    totalMs,
    upstreamMs: facts.upstreamMs ?? null,
    retries: facts.retries ?? 0,
  };
}

/** Price per 1M tokens of a deployment, else of its model group (the fallback group that served it, if one did); null when the table names neither. */
export function costOf(prices: ReadonlyMap<string, { readonly inputPer1M: number; readonly outputPer1M: number }>, row: Pick<TrackRow, 'deployment' | 'model' | 'promptTokens' | 'completionTokens'> & { readonly servedGroup?: string | null }): number | null {
  const group = row.servedGroup ?? row.model;
  const p = (row.deployment !== null ? prices.get(row.deployment) : undefined) ?? (group !== null ? prices.get(group) : undefined);
  if (p === undefined) return null;
  return ((row.promptTokens ?? 0) * p.inputPer1M + (row.completionTokens ?? 0) * p.outputPer1M) / 1e6;
}
