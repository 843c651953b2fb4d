import t from 'tap';
import { parseBrokerConfig } from '../../src/config/fleet-file.ts';
import { unenforcedNotes } from '../../src/config/unenforced.ts';
import { FLAGS, type FlagSet } from '../../src/config/flags.ts';

const group = { deployments: [{ id: 'd', provider: 'openai', url: 'http://127.0.0.1:1', model: 'm' }] };
const off: FlagSet = { ...FLAGS };
const on = { ...off, quota_enforcement: true, qos_switching: true };

t.test('what the file asks for that the flags or the environment leave unenforced is said', async (t) => {
  const c = parseBrokerConfig(
    { modelGroups: { g: group }, apiKeys: { 'sk-a': { rpm: 5, tier: 'batch', budget: { limit: 1, period: 'day' } } } },
    'test',
    {},
  );
  const notes = unenforcedNotes(c, off, false);
  t.equal(notes.length, 3);
  t.match(notes[0], /rpm\/tpm limits, but quota_enforcement is off/);
  t.match(notes[1], /QoS tiers .* qos_switching is off/);
  t.match(notes[2], /budgets .*\(DATABASE_URL unset\)/);
  t.same(unenforcedNotes(c, on, true), [], 'all on: nothing to say');
  t.same(unenforcedNotes(parseBrokerConfig({ modelGroups: { g: group } }, 'test', {}), off, false), [], 'a file that asks for none of it: nothing');
  const depLimited = parseBrokerConfig({ modelGroups: { g: { deployments: [{ ...group.deployments[0], rpm: 10 }] } } }, 'test', {});
  t.equal(unenforcedNotes(depLimited, off, true).length, 1, "a deployment's rpm too");
  const restricted = parseBrokerConfig({ modelGroups: { g: group }, qos: { tiers: { only: { allowedGroups: ['g'] } } } }, 'test', {});
  t.match(unenforcedNotes(restricted, off, true)[0], /qos_switching is off/, 'a tier restricting its groups, though no key names it (the default tier)');
});
