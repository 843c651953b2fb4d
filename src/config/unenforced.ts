// What a fleet file asks for that the running flags or environment leave unenforced: said at
// start, since each would otherwise pass unseen (a key's rpm of 5 served 200 after 200 with
// quota_enforcement off; tiers restricting groups let every key through with qos_switching off).
import type { BrokerConfig } from './broker-config.ts';
import type { FlagSet } from './flags.ts';

export function unenforcedNotes(c: Pick<BrokerConfig, 'apiKeys' | 'modelGroups' | 'qos'>, flags: FlagSet, trackingOn: boolean): string[] {
  const keys = [...c.apiKeys.values()];
  const notes: string[] = [];
  const limited = keys.some((k) => k.rpm !== undefined || k.tpm !== undefined) || [...c.modelGroups.values()].some((g) => g.deployments.some((d) => d.rpm !== undefined || d.tpm !== undefined));
  if (limited && !flags.quota_enforcement) notes.push('the fleet file sets rpm/tpm limits, but quota_enforcement is off: they are not enforced (BROKER_FF_QUOTA_ENFORCEMENT=true, or PUT /api/industrial/flags/quota_enforcement)');
  const tiered = keys.some((k) => k.tier !== undefined) || [...c.qos.tiers.values()].some((t) => !t.allowedGroups.includes('*'));
  if (tiered && !flags.qos_switching) notes.push("the fleet file assigns QoS tiers or restricts their model groups, but qos_switching is off: no tier applies, every key reaches every group (BROKER_FF_QOS_SWITCHING=true, or PUT /api/industrial/flags/qos_switching)");
  if (keys.some((k) => k.budget !== undefined) && !trackingOn) notes.push('the fleet file sets budgets on API keys, but request tracking is off (DATABASE_URL unset): budgets are not enforced (docs/tracking.md)');
  return notes;
}
