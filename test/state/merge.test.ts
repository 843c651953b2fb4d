// Three-way merges of the shared docs: what one replica changed lands on top of what another wrote meanwhile.
import t from 'tap';
import { canonical, mergeFlags, mergeOperatorState } from '../../src/state/merge.ts';
import type { OperatorState } from '../../src/fleet/manager.ts';

const state = (o: Partial<OperatorState> = {}): OperatorState => ({ rev: '1', raw: { modelGroups: {} } as OperatorState['raw'], draining: [], maintenance: [], drainedDeployments: [], bans: [], forcedOpen: [], paused: false, quotas: [], ...o });
const ban = (server: string) => ({ scope: 'server' as const, server, model: null, reason: 'x', since: 1, until: null });

t.test('operator state: changes to different entries on two replicas both survive; the same entry: the later write', async (t) => {
  const base = state({ draining: ['a'] });
  const mine = state({ draining: ['a', 'm1'] }); // drained m1 here
  const theirs = state({ draining: ['a'], bans: [ban('m2')], paused: true }); // banned m2 and paused there
  const merged = mergeOperatorState(base, mine, theirs);
  t.same([...merged.draining].sort(), ['a', 'm1']);
  t.same(merged.bans, [ban('m2')]);
  t.equal(merged.paused, true, 'a field changed only there');
  // Removed here (undrain a), kept there: the removal wins, as a change of this replica.
  t.same(mergeOperatorState(base, state(), theirs).draining, []);
  // Removed there, untouched here: gone.
  t.same(mergeOperatorState(base, base, state()).draining, []);
  // The same ban changed on both: the writer's (local) version.
  const b2 = { ...ban('m2'), reason: 'mine' };
  t.same(mergeOperatorState(state({ bans: [ban('m2')] }), state({ bans: [b2] }), state({ bans: [{ ...ban('m2'), reason: 'theirs' }] })).bans, [b2]);
  // Quotas by subject.
  const q = mergeOperatorState(state(), state({ quotas: [['key:a', { rpm: 1 }]] }), state({ quotas: [['key:b', { tpm: 9 }]] }));
  t.same(new Map(q.quotas), new Map([['key:a', { rpm: 1 }], ['key:b', { tpm: 9 }]]));
  // The running config goes with its revision, whole.
  const cfg = mergeOperatorState(state(), state(), state({ rev: '2', raw: { modelGroups: { g: { deployments: [] } } } as unknown as OperatorState['raw'] }));
  t.equal(cfg.rev, '2');
  t.same(cfg.raw, { modelGroups: { g: { deployments: [] } } });
  t.same(mergeOperatorState(undefined, mine, undefined), mine, 'nothing shared yet: ours');
});

t.test("bans: one per target, whichever of Ollama's two names it was made under", async (t) => {
  const ban = (model: string) => ({ scope: 'model' as const, server: null, model, reason: 'x', since: 1, until: null });
  const merged = mergeOperatorState(state(), state({ bans: [ban('llama3')] }), state({ bans: [ban('llama3:latest')] }));
  t.equal(merged.bans.length, 1, 'banned under both names at once: one ban');
  // Lifted here (under either name): gone, not kept under the other.
  t.same(mergeOperatorState(state({ bans: [ban('llama3:latest')] }), state(), state({ bans: [ban('llama3:latest')] })).bans, []);
});

t.test('flags: flag by flag', async (t) => {
  const base = { overrides: { a: true } };
  const merged = mergeFlags(base, { overrides: { a: true, sticky_routing: true }, replica: 'r1' }, { overrides: { a: true, priority_routing: true }, replica: 'r2' });
  t.same(merged.overrides, { a: true, sticky_routing: true, priority_routing: true });
  t.equal(merged.replica, 'r1');
  t.same(mergeFlags(base, { overrides: {} }, { overrides: { a: true, b: false } }).overrides, { b: false }, 'a cleared here, b set there');
});

t.test('canonical: the same state whatever the key order', async (t) => {
  t.equal(canonical({ b: 1, a: { d: 2, c: [{ y: 1, x: 2 }] } }), canonical({ a: { c: [{ x: 2, y: 1 }], d: 2 }, b: 1 }));
});

t.test('a TTL ban made again after the first lapsed survives the merge on a replica that dropped the lapsed one', async (t) => {
  const now = 10_000;
  const pair = (since: number, until: number) => ({ scope: 'pair' as const, server: 'fast-1', model: 'm', reason: 'x', since, until });
  const lapsed = pair(1_000, 3_000);
  const again = pair(9_000, 11_000);
  // This replica saw the first ban (its base) and dropped it when it lapsed (its local state);
  // another replica banned the same pair again (the store's doc).
  const merged = mergeOperatorState(state({ bans: [lapsed] }), state({ bans: [] }), state({ bans: [again] }), now);
  t.same(merged.bans, [again], 'the new ban holds');
  // Lifting the new ban here still wins over the store's copy of it.
  t.same(mergeOperatorState(state({ bans: [again] }), state({ bans: [] }), state({ bans: [again] }), now).bans, [], 'a live ban lifted here is lifted');
});

t.test("flags: each flag's maker comes from the side whose change the merge kept, not the later clock", async (t) => {
  const base = { overrides: {}, by: {} };
  const local = { overrides: { sticky_routing: true }, by: { sticky_routing: { actor: 'alice', at: '2026-01-01T00:00:02.000Z', replica: 'a' } }, replica: 'a' };
  // Bob's change is later by the clock, but the merge keeps the change made here (local wins).
  const remote = { overrides: { sticky_routing: false, qos_switching: true }, by: { sticky_routing: { actor: 'bob', at: '2026-01-01T00:00:09.000Z', replica: 'b' }, qos_switching: { actor: 'carol', at: '2026-01-01T00:00:05.000Z', replica: 'b' } }, replica: 'b' };
  const merged = mergeFlags(base, local, remote);
  t.same(merged.overrides, { sticky_routing: true, qos_switching: true });
  t.same(merged.by?.['sticky_routing']?.actor, 'alice', 'the value is alice\'s: so is the maker');
  t.same(merged.by?.['qos_switching']?.actor, 'carol');
});
