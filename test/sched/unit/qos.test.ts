import t from 'tap';
import { resolveTier, tierCap, type QosConfig, type QosTier } from '../../../src/policy/qos.ts';

const tier = (name: string, o: Partial<QosTier> = {}): QosTier => ({ name, maxQueueWaitMs: 1_000, maxOutputTokens: null, allowedGroups: ['*'], capacityShare: 1, priority: 5, ...o });

const cfg: QosConfig = {
  defaultTier: 'standard',
  tiers: new Map([
    ['gold', tier('gold', { priority: 9 })],
    ['standard', tier('standard')],
    ['cheap', tier('cheap', { allowedGroups: ['small', 'tiny'], capacityShare: 0.25 })],
  ]),
};

t.test("the key's tier, else the default; the header may only lower it", async (t) => {
  let r = resolveTier(cfg, { keyTier: 'gold' });
  t.equal(r.ok, true);
  t.equal(r.tier.name, 'gold');
  t.equal(r.source, 'api_key');
  t.match(r.reason, /API key is assigned tier gold/);

  r = resolveTier(cfg, { keyTier: 'gold', headerTier: 'cheap' });
  t.equal(r.tier.name, 'cheap', 'a header may lower a key tier');
  t.equal(r.source, 'header');
  t.match(r.reason, /x-broker-qos lowered the tier from gold to cheap/);

  r = resolveTier(cfg, { headerTier: 'gold' });
  t.equal(r.tier.name, 'standard', 'a keyless client cannot pick a higher tier');
  t.equal(r.source, 'default');
  t.match(r.reason, /x-broker-qos cannot raise the tier to gold; default tier standard/);

  r = resolveTier(cfg, { keyTier: 'cheap', headerTier: 'gold' });
  t.equal(r.tier.name, 'cheap', 'nor can a key holder raise its own');

  r = resolveTier(cfg, {});
  t.equal(r.tier.name, 'standard');
  t.equal(r.source, 'default');
  t.equal(r.reason, 'default tier standard');
});

t.test("an unknown header tier counts for nothing; a key's tier that is gone refuses (its default may allow what the key's never did)", async (t) => {
  let r = resolveTier(cfg, { keyTier: 'platinum', headerTier: 'gold' });
  t.equal(r.ok, false, "a key whose tier a config change removed is refused, not let through on the default's terms");
  t.match(r.reason, /tier platinum is not configured/);
  t.equal(resolveTier(cfg, { keyTier: 'platinum', group: 'tiny' }).ok, false, 'whatever the group');

  r = resolveTier(cfg, { headerTier: 'platinum' });
  t.equal(r.ok, true);
  t.equal(r.tier.name, 'standard');
  t.equal(r.source, 'default');
  t.match(r.reason, /unknown tier platinum in x-broker-qos; default tier standard/);
});

t.test('allowedGroups: a tier may be refused a group, whatever the source', async (t) => {
  const denied = resolveTier(cfg, { headerTier: 'cheap', group: 'large' });
  t.equal(denied.ok, false);
  t.equal(denied.tier.name, 'cheap');
  t.equal(denied.source, 'header');
  t.match(denied.reason, /tier cheap may not use model group large \(allowed: small, tiny\)/);

  t.equal(resolveTier(cfg, { keyTier: 'cheap', group: 'large' }).ok, false);
  t.equal(resolveTier(cfg, { keyTier: 'cheap', group: 'tiny' }).ok, true);
  t.equal(resolveTier(cfg, { keyTier: 'cheap' }).ok, true, 'no group asked: nothing to deny');
  t.equal(resolveTier(cfg, { keyTier: 'gold', group: 'large' }).ok, true, "'*' allows every group");

  const strictDefault: QosConfig = { defaultTier: 'cheap', tiers: cfg.tiers };
  const r = resolveTier(strictDefault, { group: 'large' });
  t.equal(r.ok, false, 'the default tier is checked too');
  t.equal(r.source, 'default');
});

t.test('tierCap: share of the limit, floored, at least one', async (t) => {
  t.equal(tierCap(10, null), 10, 'no tier: the limit');
  t.equal(tierCap(10, tier('x', { capacityShare: 1 })), 10);
  t.equal(tierCap(10, tier('x', { capacityShare: 0.5 })), 5);
  t.equal(tierCap(10, tier('x', { capacityShare: 0.25 })), 2, 'floor of 2.5');
  t.equal(tierCap(3, tier('x', { capacityShare: 0.1 })), 1, 'never below one');
  t.equal(tierCap(0, tier('x', { capacityShare: 0.5 })), 1, 'even for a limit of 0 (capacity still gates at the limit)');
});

// Before: the header's tier replaced the assigned one whole, so a free key asking for a
// lower-priority tier with every group and no output cap escaped both limits.
t.test("the header's tier never lifts a limit of the assigned tier: groups, output cap, capacity share", async (t) => {
  const tiers: QosConfig = {
    defaultTier: 'free',
    tiers: new Map([
      ['free', tier('free', { priority: 3, allowedGroups: ['chat-small'], maxOutputTokens: 3, capacityShare: 0.5, maxQueueWaitMs: 5_000 })],
      ['bulk', tier('bulk', { priority: 1, allowedGroups: ['*'], maxOutputTokens: null, capacityShare: 1, maxQueueWaitMs: 60_000 })],
      ['narrow', tier('narrow', { priority: 2, allowedGroups: ['chat-small', 'big'], maxOutputTokens: 100, capacityShare: 0.2 })],
    ]),
  };
  const r = resolveTier(tiers, { keyTier: 'free', headerTier: 'bulk', group: 'big' });
  t.equal(r.ok, false, "bulk's groups are not free's");
  t.equal(r.tier.name, 'bulk', 'the tier asked for, lowered');
  t.same(r.tier.allowedGroups, ['chat-small']);
  t.equal(r.tier.maxOutputTokens, 3, "free's output cap holds");
  t.equal(r.tier.capacityShare, 0.5, "free's capacity share holds");
  t.equal(r.tier.priority, 1, "bulk's lower priority");
  t.equal(r.tier.maxQueueWaitMs, 60_000, "and bulk's queue wait (a batch class waits longer)");
  const n = resolveTier(tiers, { keyTier: 'free', headerTier: 'narrow', group: 'chat-small' });
  t.same([n.ok, n.tier.allowedGroups, n.tier.maxOutputTokens, n.tier.capacityShare], [true, ['chat-small'], 3, 0.2], 'each limit the stricter of the two');
  // The built-in case the header is for: a realtime key's batch jobs keep realtime's output cap.
  const b = resolveTier({ defaultTier: 'standard', tiers: new Map([['realtime', tier('realtime', { priority: 8, maxOutputTokens: 2048 })], ['batch', tier('batch', { priority: 1, capacityShare: 0.5 })]]) }, { keyTier: 'realtime', headerTier: 'batch' });
  t.same([b.tier.name, b.tier.priority, b.tier.maxOutputTokens, b.tier.capacityShare], ['batch', 1, 2048, 0.5]);
});
