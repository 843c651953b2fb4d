import t from 'tap';
import { FLAGS, FLAG_NAMES, FlagStore, envName, isFlagName, type FlagSet } from '../../src/config/flags.ts';

const T0 = Date.UTC(2024, 0, 2, 3, 4, 5);

function store(fromEnv: Partial<Record<keyof typeof FLAGS, boolean>> = {}, maxAudit?: number) {
  const clock = { now: T0 };
  const s = new FlagStore(fromEnv, () => clock.now, maxAudit);
  const heard: FlagSet[] = [];
  s.onChange((f) => heard.push(f));
  return { clock, s, heard };
}

t.test('names: env variable names and the flag name check', async (t) => {
  t.equal(envName('sticky_routing'), 'BROKER_FF_STICKY_ROUTING');
  t.ok(isFlagName('capacity_gating'));
  t.notOk(isFlagName('no_such_flag'));
  t.notOk(isFlagName('toString'), 'inherited object keys are not flags');
  t.same(FLAG_NAMES, Object.keys(FLAGS));
});

t.test('defaults, then env values on top; describe() names the source', async (t) => {
  const { s } = store({ capacity_gating: false, sticky_routing: true });
  t.equal(s.flags.capacity_gating, false, 'env turns a default-on flag off');
  t.equal(s.flags.sticky_routing, true, 'env turns a default-off flag on');
  for (const name of FLAG_NAMES) {
    if (name === 'capacity_gating' || name === 'sticky_routing') continue;
    t.equal(s.flags[name], FLAGS[name], `${name} keeps its default`);
  }
  const d = s.describe();
  t.same(d.capacity_gating, { enabled: false, source: 'env' });
  t.same(d.sticky_routing, { enabled: true, source: 'env' });
  t.same(d.performance_routing, { enabled: true, source: 'default' });
  t.same(d.quota_enforcement, { enabled: false, source: 'default' });
  t.same(Object.keys(d), FLAG_NAMES, 'every flag is described');
  t.ok(Object.isFrozen(s.flags), 'the flag set is frozen');

  // An env value equal to the default still reports env as its source.
  t.same(store({ performance_routing: true }).s.describe().performance_routing, { enabled: true, source: 'env' });
});

t.test('override on top of env, clear falls back to env (not to the default)', async (t) => {
  const { s, heard } = store({ sticky_routing: true });
  s.set('sticky_routing', false, 'alice');
  t.equal(s.flags.sticky_routing, false);
  t.same(s.describe().sticky_routing, { enabled: false, source: 'override' });
  t.equal(heard.length, 1);

  s.clear('sticky_routing', 'bob');
  t.equal(s.flags.sticky_routing, true, 'back to the env value');
  t.same(s.describe().sticky_routing, { enabled: true, source: 'env' });
  t.equal(heard.length, 2);
  t.equal(heard[1]!.sticky_routing, true);
});

t.test('an override equal to the base value is still an override, but not a change', async (t) => {
  const { s, heard } = store();
  const before = s.flags;
  s.set('capacity_gating', true, 'alice');
  t.same(s.describe().capacity_gating, { enabled: true, source: 'override' });
  t.equal(s.flags, before, 'same object: nothing effective changed');
  t.equal(heard.length, 0, 'no listener call for a no-op');
  s.clear('capacity_gating', 'alice');
  t.same(s.describe().capacity_gating, { enabled: true, source: 'default' });
  t.equal(s.flags, before);
  t.equal(heard.length, 0);
});

t.test('clear of a flag without an override does nothing, not even an audit entry', async (t) => {
  const { s, heard } = store();
  const before = s.flags;
  s.clear('sticky_routing', 'alice');
  s.clearAll('alice');
  t.equal(s.flags, before);
  t.equal(heard.length, 0);
  t.same(s.auditLog, []);
});

t.test('flags identity changes exactly when a value changes', async (t) => {
  const { s } = store();
  const a = s.flags;
  s.set('sticky_routing', true, 'x');
  const b = s.flags;
  t.not(b, a, 'a new object after a change');
  t.equal(a.sticky_routing, false, 'the old object is untouched');
  t.equal(b.sticky_routing, true);
  s.set('sticky_routing', true, 'x');
  t.equal(s.flags, b, 'setting the same value again keeps the object');
  s.apply([['qos_switching', false], ['sticky_routing', true]], 'x');
  t.equal(s.flags, b, 'a bulk change with no effect keeps the object');
  s.set('sticky_routing', false, 'x');
  t.not(s.flags, b);
  t.same(s.flags, a, 'equal in value to the first set');
});

t.test('apply: several changes heard once; null clears', async (t) => {
  const { s, heard } = store({ quota_enforcement: true });
  s.apply(
    [
      ['sticky_routing', true],
      ['capacity_gating', false],
      ['qos_switching', true],
    ],
    'ops',
  );
  t.equal(heard.length, 1, 'one listener call for one bulk change');
  t.equal(heard[0], s.flags, 'the listener gets the new flag set');
  t.match(heard[0], { sticky_routing: true, capacity_gating: false, qos_switching: true, quota_enforcement: true });

  s.apply(
    [
      ['sticky_routing', null],
      ['capacity_gating', null],
      ['quota_enforcement', false],
    ],
    'ops',
  );
  t.equal(heard.length, 2);
  t.match(s.flags, { sticky_routing: false, capacity_gating: true, qos_switching: true, quota_enforcement: false });
  const d = s.describe();
  t.equal(d.sticky_routing.source, 'default');
  t.equal(d.capacity_gating.source, 'default');
  t.equal(d.quota_enforcement.source, 'override');
  t.equal(d.qos_switching.source, 'override');
});

t.test('clearAll removes every override at once', async (t) => {
  const { s, heard } = store({ compiled_chain: true });
  s.apply(
    [
      ['compiled_chain', false],
      ['sticky_routing', true],
    ],
    'a',
  );
  t.equal(heard.length, 1);
  s.clearAll('b');
  t.equal(heard.length, 2, 'one call for all the clears');
  t.equal(s.flags.compiled_chain, true, 'env value back');
  t.equal(s.flags.sticky_routing, false, 'default back');
  for (const name of FLAG_NAMES) t.not(s.describe()[name].source, 'override', `${name} has no override`);
  const clears = s.auditLog.filter((e) => e.action === 'clear');
  t.same(clears.map((e) => e.flag).sort(), ['compiled_chain', 'sticky_routing']);
  t.ok(clears.every((e) => e.actor === 'b'));
});

t.test('listeners: every listener once per effective change, in registration order', async (t) => {
  const { s } = store();
  const calls: string[] = [];
  s.onChange(() => calls.push('first'));
  s.onChange(() => calls.push('second'));
  s.set('priority_routing', true, 'x');
  t.same(calls, ['first', 'second']);
  s.set('priority_routing', true, 'x');
  s.clear('stream_instrumentation', 'x');
  t.same(calls, ['first', 'second'], 'no calls for no-ops');
  // A set then a clear in one apply that end where they started: no effective change.
  s.apply(
    [
      ['output_prediction', true],
      ['output_prediction', null],
    ],
    'x',
  );
  t.equal(s.flags.output_prediction, false);
  t.same(calls, ['first', 'second'], 'a bulk change that nets to nothing is not heard');
});

t.test('audit: actor, action, old and new values, time from the injected clock', async (t) => {
  const { clock, s } = store({ capacity_gating: false });
  s.set('capacity_gating', true, 'alice');
  clock.now = T0 + 1_500;
  s.set('sticky_routing', true, 'bob');
  clock.now = T0 + 60_000;
  s.clear('capacity_gating', 'carol');
  s.set('sticky_routing', true, 'dave'); // a no-op set is still recorded: someone asked for it
  t.same(s.auditLog, [
    { at: new Date(T0).toISOString(), actor: 'alice', flag: 'capacity_gating', action: 'set', old: false, new: true },
    { at: new Date(T0 + 1_500).toISOString(), actor: 'bob', flag: 'sticky_routing', action: 'set', old: false, new: true },
    { at: new Date(T0 + 60_000).toISOString(), actor: 'carol', flag: 'capacity_gating', action: 'clear', old: true, new: false },
    { at: new Date(T0 + 60_000).toISOString(), actor: 'dave', flag: 'sticky_routing', action: 'set', old: true, new: true },
  ]);
  t.equal(s.auditLog[0]!.at, '2024-01-02T03:04:05.000Z', 'ISO time of the fake clock, not the wall clock');
});

t.test("another replica's change is audited with its maker's old value, not this replica's (its env may differ)", async (t) => {
  // The maker: env qos_switching on, turned off then on again by an operator.
  const maker = store({ qos_switching: true }).s;
  maker.set('qos_switching', false, 'admin-token');
  maker.set('qos_switching', true, 'admin-token');
  const origins = Object.fromEntries(Object.entries(maker.originMap()).map(([f, o]) => [f, { ...o!, replica: 'A' }]));
  t.equal(origins['qos_switching']!.old, false, 'the origin carries the value before the change');
  // A replica started later with the same env learns the override from the shared doc.
  const late = store({ qos_switching: true }).s;
  late.replaceOverrides(maker.overrideMap(), 'replica:A', origins);
  t.match(late.auditLog, [{ actor: 'admin-token via replica:A', flag: 'qos_switching', action: 'set', old: false, new: true }]);
  // A clear there falls back to the maker's env (on), whatever this replica's (off) says.
  const other = store({ qos_switching: false }).s;
  other.replaceOverrides(maker.overrideMap(), 'replica:A', origins);
  maker.clear('qos_switching', 'admin-token');
  const cleared = Object.fromEntries(Object.entries(maker.originMap()).map(([f, o]) => [f, { ...o!, replica: 'A' }]));
  other.replaceOverrides(maker.overrideMap(), 'replica:A', cleared);
  t.match(other.auditLog.at(-1), { flag: 'qos_switching', action: 'clear', old: true, new: true }, "the maker's old and new, not this replica's env");
});

t.test('audit is bounded by maxAudit: the oldest entries go', async (t) => {
  const { clock, s } = store({}, 3);
  for (let i = 0; i < 5; i++) {
    clock.now = T0 + i * 1000;
    s.set('sticky_routing', i % 2 === 0, `actor-${i}`);
  }
  t.equal(s.auditLog.length, 3);
  t.same(
    s.auditLog.map((e) => e.actor),
    ['actor-2', 'actor-3', 'actor-4'],
  );
  t.equal(s.auditLog[0]!.at, new Date(T0 + 2000).toISOString());
  // A bulk change larger than the bound keeps only its last entries.
  s.apply(
    FLAG_NAMES.map((f) => [f, true] as const),
    'bulk',
  );
  t.equal(s.auditLog.length, 3);
  t.same(
    s.auditLog.map((e) => e.flag),
    FLAG_NAMES.slice(-3),
  );
});

t.test('the compiled chain is on by default; BROKER_FF_COMPILED_CHAIN=false still turns it off', async (t) => {
  t.equal(new FlagStore({}).flags.compiled_chain, true);
  t.equal(new FlagStore({ compiled_chain: false }).flags.compiled_chain, false);
});
