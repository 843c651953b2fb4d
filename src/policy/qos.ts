// QoS tiers: what a class of traffic may do (queue wait, output tokens, model groups,
// share of each deployment's capacity) and how a request's tier is decided: its API
// key's tier (a key the broker knows), else the default tier; the x-broker-qos header
// may only lower it (to a tier of lower or equal priority), never raise it, nor lift a
// limit of the assigned tier (its groups, output cap and capacity share still hold). Pure.

export interface QosTier {
  readonly name: string;
  /** Longest a request of this tier waits for capacity before 504 queue_timeout. */
  readonly maxQueueWaitMs: number;
  /** Output tokens are capped at this (max_tokens / num_predict lowered to it). */
  readonly maxOutputTokens: number | null;
  /** Model groups this tier may use; ['*'] for all. */
  readonly allowedGroups: readonly string[];
  /** Share of each deployment's concurrency limit this tier may fill (0-1]. */
  readonly capacityShare: number;
  /** Queue priority when priority routing is on (0-9, higher first). */
  readonly priority: number;
}

export interface QosConfig {
  readonly defaultTier: string;
  readonly tiers: ReadonlyMap<string, QosTier>;
}

export const DEFAULT_QOS: QosConfig = {
  defaultTier: 'standard',
  tiers: new Map<string, QosTier>([
    ['realtime', { name: 'realtime', maxQueueWaitMs: 2_000, maxOutputTokens: 2_048, allowedGroups: ['*'], capacityShare: 1, priority: 8 }],
    ['standard', { name: 'standard', maxQueueWaitMs: 10_000, maxOutputTokens: null, allowedGroups: ['*'], capacityShare: 0.9, priority: 5 }],
    ['batch', { name: 'batch', maxQueueWaitMs: 60_000, maxOutputTokens: null, allowedGroups: ['*'], capacityShare: 0.5, priority: 1 }],
  ]),
};

export interface QosInput {
  readonly keyTier?: string | undefined;
  readonly headerTier?: string | undefined;
  readonly group?: string | undefined;
}

export type QosResolution =
  | { ok: true; tier: QosTier; source: 'api_key' | 'header' | 'default'; reason: string }
  | { ok: false; tier: QosTier; source: 'api_key' | 'header' | 'default'; reason: string };

export function resolveTier(cfg: QosConfig, input: QosInput): QosResolution {
  let tier: QosTier;
  let source: 'api_key' | 'header' | 'default';
  let reason: string;
  if (input.keyTier !== undefined && cfg.tiers.has(input.keyTier)) {
    tier = cfg.tiers.get(input.keyTier)!;
    source = 'api_key';
    reason = `the API key is assigned tier ${tier.name}`;
  } else if (input.keyTier !== undefined) {
    // A key's tier a config change removed (a runtime key keeps its name): its limits are gone
    // with it, and the default tier may allow what the key's never did. Closed, not opened.
    const fallback = cfg.tiers.get(cfg.defaultTier)!;
    return { ok: false, tier: fallback, source: 'api_key', reason: `the API key's tier ${input.keyTier} is not configured (removed from the QoS tiers?): its requests are refused until the tier is back or the key is given another` };
  } else {
    tier = cfg.tiers.get(cfg.defaultTier)!;
    source = 'default';
    reason = `default tier ${tier.name}`;
  }
  if (input.headerTier !== undefined && input.headerTier !== tier.name) {
    const asked = cfg.tiers.get(input.headerTier);
    if (asked === undefined) reason = `unknown tier ${input.headerTier} in x-broker-qos; ${reason}`;
    else if (asked.priority > tier.priority) reason = `x-broker-qos cannot raise the tier to ${asked.name}; ${reason}`;
    else {
      reason = `x-broker-qos lowered the tier from ${tier.name} to ${asked.name}`;
      tier = within(asked, tier);
      source = 'header';
    }
  }
  if (input.group !== undefined && !tierAllows(tier, input.group)) {
    return { ok: false, tier, source, reason: `tier ${tier.name} may not use model group ${input.group} (allowed: ${tier.allowedGroups.join(', ')})` };
  }
  return { ok: true, tier, source, reason };
}

/**
 * The tier a client asked for, within the one it was assigned: its priority and queue wait,
 * but no group, output token or capacity share the assigned tier does not allow (a free
 * tier's key asking for `bulk` got bulk's groups and no output cap).
 */
function within(asked: QosTier, assigned: QosTier): QosTier {
  const groups = assigned.allowedGroups.includes('*') ? asked.allowedGroups : asked.allowedGroups.includes('*') ? assigned.allowedGroups : asked.allowedGroups.filter((g) => assigned.allowedGroups.includes(g));
  const cap = asked.maxOutputTokens === null ? assigned.maxOutputTokens : assigned.maxOutputTokens === null ? asked.maxOutputTokens : Math.min(asked.maxOutputTokens, assigned.maxOutputTokens);
  return { ...asked, allowedGroups: groups, maxOutputTokens: cap, capacityShare: Math.min(asked.capacityShare, assigned.capacityShare) };
}

/** Whether a tier may use a model group: the requested one, and every fallback group too. */
export function tierAllows(tier: QosTier | null, group: string): boolean {
  return tier === null || tier.allowedGroups.includes('*') || tier.allowedGroups.includes(group);
}

/** The most slots of a deployment a tier may fill: its share of the limit, at least one. */
export function tierCap(limit: number, tier: QosTier | null): number {
  if (tier === null || tier.capacityShare >= 1) return limit;
  return Math.max(1, Math.floor(limit * tier.capacityShare));
}
