// Admission: the enabled policies applied to one typed request, in order: QoS tier →
// priority → label → output prediction → API-key quota. It runs before any deployment
// is chosen; the scheduler then finds the request a lease. Pure but for the quota
// reservation it takes (given back by the lease source when the request ends).
import { BrokerError } from '../errors.ts';
import type { ApiKeyPolicy, ModelGroupConfig } from '../config/broker-config.ts';
import type { FlagSet } from '../config/flags.ts';
import { tokensOfChars, type LlmRequest } from '../llm/request.ts';
import { prefixKey } from '../policy/sticky.ts';
import { keyId } from '../guard/api-key.ts';
import { resolveTier, type QosConfig, type QosTier } from '../policy/qos.ts';
import { awaitsTopUp, type QuotaLedger, type Reservation } from '../policy/quota.ts';
import { rateLimitHeaders } from '../policy/rate-limit-headers.ts';
import type { OutputPredictor } from '../policy/prediction.ts';
import type { BudgetGate } from '../track/budget.ts';
import type { Caller } from '../front/reply.ts';

/** What admission decided for one request. */
export interface Admitted {
  readonly request: LlmRequest;
  readonly flags: FlagSet;
  readonly tier: QosTier | null;
  readonly tierSource: string | null;
  readonly priority: number;
  readonly label: string;
  readonly stickyKey: string | undefined;
  /** Estimated prompt tokens plus predicted (or requested) output tokens; 0 without quota enforcement. */
  readonly reserveTokens: number;
  readonly predictedOutput: number;
  /** The client body, with max output tokens capped by the tier if needed (a copy then). */
  readonly body: Readonly<Record<string, unknown>>;
  readonly keyReservation: Reservation | null;
  /** The key's quota after this request, as x-ratelimit-* reply headers (docs/governance.md); none for a request that took none. */
  readonly rateLimitHeaders?: Readonly<Record<string, string>> | undefined;
  /**
   * The key's quota still to reserve (admit() with deferQuota): the proxy reserves it with
   * reserveQuota() once the response cache missed, so that a hit takes none of it.
   */
  readonly quotaDue?: { readonly subject: string; readonly tokens: number; readonly returnable: number } | undefined;
  /** Epoch ms of admission: queue age and deadline start here. */
  readonly since: number;
}

/** What admission reads: the flags in force and the policies they enable. */
export interface AdmissionPolicies {
  readonly flags: FlagSet;
  readonly qos: QosConfig;
  keyPolicy(apiKey: string | undefined): ApiKeyPolicy | undefined;
  /** A known key's policy by its id: a session is held to the key it was made from. */
  keyPolicyById(id: string): ApiKeyPolicy | undefined;
  readonly predictor: OutputPredictor;
  readonly quota: QuotaLedger;
  readonly defaultOutputTokens: number;
  readonly stickyPrefixBytes: number;
  readonly now: () => number;
  /** Counts a refusal by the API key's quota. */
  onKeyQuotaRejection(): void;
  /** Labels the operator configured (known keys' labels, PTU labels): the only ones a keyless request may name. */
  admittedLabel(label: string): boolean;
  /** Budgets per API key (request tracking on): the cached spend, checked here. */
  readonly budgets?: BudgetGate | undefined;
  /** How long a request may wait for its key's lease top-up (replicas sharing Redis) before 429; 0: not at all. Default 1 s (the top-up is a 50 ms tick and a Redis round trip away, more on a busy control plane). */
  readonly leaseWaitMs?: number;
}

/** Where requests whose label is not admitted are counted (usage profiles and predictors stay bounded). */
export const OTHER_LABEL = 'other';

/**
 * The known API key a request speaks for, with its id: its own key, or the key its session
 * was made from (client-auth sets the caller). A session must not escape its key's quotas,
 * tier, priority or budget.
 */
export function knownKeyOf(p: Pick<AdmissionPolicies, 'keyPolicy' | 'keyPolicyById'>, apiKey: string | undefined, caller: Caller | undefined): { policy: ApiKeyPolicy; id: string } | undefined {
  if (apiKey !== undefined) {
    const policy = p.keyPolicy(apiKey);
    if (policy !== undefined) return { policy, id: keyId(apiKey) };
  }
  const id = caller?.keyId;
  if (id === undefined) return undefined;
  const policy = p.keyPolicyById(id);
  return policy === undefined ? undefined : { policy, id };
}

/**
 * The output limit the request's QoS tier puts on it, as admit() will (undefined: none). Says
 * nothing when the tier refuses the request: admit() does.
 */
export function tierOutputCap(p: Pick<AdmissionPolicies, 'flags' | 'qos' | 'keyPolicy' | 'keyPolicyById'>, r: LlmRequest, group: ModelGroupConfig): number | undefined {
  if (!p.flags.qos_switching || r.kind === 'embed') return undefined;
  const t = resolveTier(p.qos, { keyTier: knownKeyOf(p, r.apiKey, r.caller)?.policy.tier ?? r.caller?.tier, headerTier: r.tier, group: group.name });
  return t.ok && t.tier.maxOutputTokens !== null ? t.tier.maxOutputTokens : undefined;
}

/**
 * Applies the enabled admission policies. Throws forbidden (QoS) or quota_exceeded. A promise
 * only when the key's lease is being topped up (see reserveWhenTopped); else at once.
 */
export function admit(p: AdmissionPolicies, r: LlmRequest, group: ModelGroupConfig, opts?: { readonly deferQuota?: boolean }): Admitted | Promise<Admitted> {
  const flags = p.flags;
  const known = knownKeyOf(p, r.apiKey, r.caller);
  const policy = known?.policy;
  let tier: QosTier | null = null;
  let tierSource: string | null = null;
  let body = r.body;
  let maxTokens = r.maxTokens;
  if (flags.qos_switching) {
    const t = resolveTier(p.qos, { keyTier: policy?.tier ?? r.caller?.tier, headerTier: r.tier, group: group.name });
    if (!t.ok) throw new BrokerError('forbidden', t.reason);
    tier = t.tier;
    tierSource = t.source;
    const cap = tier.maxOutputTokens;
    // Embeddings have no output to cap: their body goes upstream as sent.
    if (cap !== null && r.kind !== 'embed' && (maxTokens === undefined || maxTokens > cap)) {
      body = capOutputTokens(body, cap, r.api);
      maxTokens = cap;
    }
  }
  // What a known key says wins over headers; a header may only lower the priority.
  const basePriority = policy?.priority ?? tier?.priority ?? 5;
  const priority = flags.priority_routing ? (r.priority !== undefined ? Math.min(r.priority, basePriority) : basePriority) : 5;
  // Labels name usage profiles and predictors, kept in memory: a known key's label, a label
  // a known key sends, or one the operator configured; any other label counts as `other`,
  // and an unknown key gets no profile of its own.
  const label =
    policy?.label ??
    (r.label !== undefined ? (known !== undefined || p.admittedLabel(r.label) ? r.label : OTHER_LABEL) : known !== undefined ? `key:${known.id}` : `${r.api}:${r.kind}`);
  // Embeddings produce no tokens: only their input is reserved.
  // The client's own max_tokens (a QoS tier's cap may have lowered it). Sent none, the tier's
  // cap bounds the guess but is not it: a realtime key reserved its 2,048 where a standard one
  // reserved defaultOutputTokens.
  const clientMax = r.maxTokens === undefined ? undefined : maxTokens;
  let predictedOutput = r.kind === 'embed' ? 0 : flags.output_prediction ? p.predictor.predict(label, clientMax, p.defaultOutputTokens).tokens : (clientMax ?? p.defaultOutputTokens);
  if (clientMax === undefined && maxTokens !== undefined) predictedOutput = Math.min(predictedOutput, maxTokens);
  // A guess (no max_tokens from the client: a QoS tier's cap is no more than a bound) never
  // reserves past the key's tpm: a key whose limit is below the guess would be refused as
  // "can never fit" for ever, and never learn its real output sizes. What it spends beyond
  // is charged when the usage comes back.
  if (r.maxTokens === undefined && predictedOutput > 0 && flags.quota_enforcement && known !== undefined) {
    const tpm = p.quota.limits(`key:${known.id}`)?.tpm ?? known.policy.tpm;
    if (tpm !== undefined) predictedOutput = Math.min(predictedOutput, Math.max(0, Math.floor((tpm - tokensOfChars(r.promptChars)) / r.choices)));
  }
  const facts = r.facts;
  if (facts !== undefined) {
    facts.label = label;
    facts.priority = priority;
    facts.tier = tier?.name ?? policy?.tier ?? r.caller?.tier;
    if (flags.output_prediction) facts.predictedTokens = predictedOutput;
  }
  // Over its budget, a key is refused before it takes any quota or capacity.
  if (policy?.budget !== undefined && p.budgets !== undefined) p.budgets.check(known!.id, policy.budget);
  // Only quotas reserve tokens: without them, no need to walk the prompt.
  // Each of n choices is an output of its own.
  const reserveTokens = flags.quota_enforcement ? tokensOfChars(r.promptChars) + predictedOutput * r.choices : 0;
  const admitted = (keyReservation: Reservation | null, headers?: Record<string, string>, quotaDue?: Admitted['quotaDue']): Admitted => ({
    request: r,
    flags,
    tier,
    tierSource,
    priority,
    label,
    stickyKey: flags.sticky_routing ? prefixKey(r, group.name, p.stickyPrefixBytes) : undefined,
    reserveTokens,
    predictedOutput,
    body,
    keyReservation,
    ...(headers !== undefined ? { rateLimitHeaders: headers } : {}),
    ...(quotaDue !== undefined ? { quotaDue } : {}),
    since: p.now(),
  });
  if (!(flags.quota_enforcement && known !== undefined)) return admitted(null);
  const subject = `key:${known.id}`;
  // Limits of its own (the file's, the key's), or ones an operator set at run time (the ledger's).
  if (known.policy.rpm === undefined && known.policy.tpm === undefined && p.quota.limits(subject) === undefined) return admitted(null);
  // What the request's end may give back: its output guess (the prompt is spent).
  const returnable = predictedOutput * r.choices;
  if (opts?.deferQuota === true) return admitted(null, undefined, { subject, tokens: reserveTokens, returnable });
  return reserveFor(p, subject, reserveTokens, returnable, r.api, admitted);
}

/**
 * Reserves what admit() deferred (the response cache missed); throws quota_exceeded. A
 * promise only while the key's lease is being topped up.
 */
export function reserveQuota(p: AdmissionPolicies, a: Admitted): Admitted | Promise<Admitted> {
  const due = a.quotaDue;
  if (due === undefined) return a;
  return reserveFor(p, due.subject, due.tokens, due.returnable, a.request.api, (keyReservation, headers) => ({ ...a, keyReservation, rateLimitHeaders: headers, quotaDue: undefined }));
}

function reserveFor(p: AdmissionPolicies, subject: string, reserveTokens: number, returnable: number, api: LlmRequest['api'], admitted: (r: Reservation, headers: Record<string, string> | undefined) => Admitted): Admitted | Promise<Admitted> {
  const taken = (r: Reservation): Admitted => admitted(r, headroomHeaders(p, subject, api));
  try {
    return taken(p.quota.reserve([subject], reserveTokens, returnable));
  } catch (err) {
    // With replicas, a key's budget comes in leases the control plane tops up every tick: a
    // request right behind another (a key idle until now, a burst) may find the lease spent
    // with the next one on its way. It waits for it, briefly, rather than be refused.
    if (awaitsTopUp(err) && (p.leaseWaitMs ?? LEASE_WAIT_MS) > 0) return reserveWhenTopped(p, subject, reserveTokens, returnable, err).then(taken, (e: unknown) => Promise.reject(withHeadroom(p, subject, api, e)));
    p.onKeyQuotaRejection();
    throw withHeadroom(p, subject, api, err);
  }
}

/** The key's x-ratelimit-* headers as its window stands now. */
function headroomHeaders(p: AdmissionPolicies, subject: string, api: LlmRequest['api']): Record<string, string> | undefined {
  const h = p.quota.headroom(subject);
  return h === undefined ? undefined : rateLimitHeaders(h, p.now(), api === 'anthropic');
}

/** A key's quota refusal, with the headers a 429 carries as well (errorReply sends them). */
function withHeadroom(p: AdmissionPolicies, subject: string, api: LlmRequest['api'], err: unknown): unknown {
  if (!(err instanceof BrokerError) || err.code !== 'quota_exceeded') return err;
  const headers = headroomHeaders(p, subject, api);
  return headers === undefined ? err : new BrokerError(err.code, err.message, { retryAfter: err.retryAfter, details: { ...err.details, replyHeaders: headers } });
}

/** Polls the key's lease until its top-up lands or `leaseWaitMs` runs out; a refusal then is the last one. */
async function reserveWhenTopped(p: AdmissionPolicies, subject: string, tokens: number, returnable: number, first: unknown): Promise<Reservation> {
  let last = first;
  for (let polls = Math.ceil((p.leaseWaitMs ?? LEASE_WAIT_MS) / LEASE_POLL_MS); polls > 0; polls--) {
    await new Promise((resolve) => setTimeout(resolve, LEASE_POLL_MS));
    try {
      return p.quota.reserve([subject], tokens, returnable);
    } catch (err) {
      last = err;
      if (!awaitsTopUp(err)) break;
    }
  }
  p.onKeyQuotaRejection();
  throw last;
}

/** How often a request waiting for its key's lease looks again (the lease keeper looks every 50 ms), and for how long. */
const LEASE_POLL_MS = 20;
const LEASE_WAIT_MS = 1000;

/** Lowers the output-token limit in the field the client API uses (a copy: the client's body is left alone). */
function capOutputTokens(body: Readonly<Record<string, unknown>>, cap: number, api: LlmRequest['api']): Record<string, unknown> {
  if (api === 'responses') return { ...body, max_output_tokens: cap };
  if (api === 'anthropic') return { ...body, max_tokens: cap };
  if (api === 'openai') {
    const { max_completion_tokens: _dropped, ...rest } = body;
    return { ...rest, max_tokens: cap };
  }
  return { ...body, options: { ...((body.options as Record<string, unknown> | undefined) ?? {}), num_predict: cap } };
}
