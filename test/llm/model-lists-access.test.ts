// Model lists are open (discovery, health checks), but a credential sent there is checked as a
// client route's, and the list is the caller's: only the groups its QoS tier may use. Chat
// frontends (Open WebUI, LibreChat) build their pickers and "verify connection" from them: a
// mistyped key passed verification, and a batch key was offered groups that answered 403.
import t from 'tap';
import OpenAI from 'openai';
import { Ollama } from 'ollama';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const STD = 'sk-standard-AAAAAAAAAAAA';
const BATCH = 'sk-batch-BBBBBBBBBBBBBBB';
const m = await startMock(t);
const d = (id: string) => ({ id, provider: 'openai', url: m.url, model: 'm' });
const fleet = {
  modelGroups: { small: { deployments: [d('s1')] }, large: { deployments: [d('l1')] } },
  qos: { defaultTier: 'standard', tiers: { standard: {}, batch: { allowedGroups: ['small'] } } },
  apiKeys: { [STD]: { tier: 'standard' }, [BATCH]: { tier: 'batch' } },
};

for (const FRONT_THREADS of ['2', '0']) {
  t.test(`FRONT_THREADS=${FRONT_THREADS}`, async (t) => {
    const tb = await startFleetBroker(t, fleet, { FRONT_THREADS, INFER_ENABLED: 'false', AUTH_MODE: 'keys', BROKER_FF_QOS_SWITCHING: 'true' });
    const get = (path: string, key?: string) => fetch(`${tb.url}${path}`, { headers: key === undefined ? {} : { authorization: `Bearer ${key}` } });
    const ids = async (key?: string) => (((await (await get('/v1/models', key)).json()) as { data: { id: string }[] }).data.map((x) => x.id).sort());

    t.same(await ids(), ['large', 'small'], 'no credential: the open list, as before');
    t.same(await ids(STD), ['large', 'small'], 'a standard key: every group');
    t.same(await ids(BATCH), ['small'], 'a batch key: only what its tier may use');
    const batch = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: BATCH, maxRetries: 0 });
    t.same((await batch.models.list()).data.map((x) => x.id), ['small'], 'through the SDK');
    const hidden: any = await batch.models.retrieve('large').catch((e: unknown) => e);
    t.equal(hidden.status, 404, 'a group its tier may not use is not there for it');
    t.equal((await batch.models.retrieve('small')).id, 'small');
    const named = (await (await get('/v1/models/large', BATCH)).json()) as { error: { message: string } };
    t.match(named.error.message, /available: small$/, 'its 404 names only what it may use (it named every group)');
    const chat: any = await batch.chat.completions.create({ model: 'large', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    t.equal(chat.status, 403, 'and a chat with it is refused, as the list said');

    // Ollama's lists and /api/show: the same.
    const ollama = new Ollama({ host: tb.url, headers: { authorization: `Bearer ${BATCH}` } });
    t.same((await ollama.list()).models.map((x) => x.name), ['small:latest']);
    t.same((await ollama.ps()).models.map((x) => x.name), ['small:latest']);
    const shown: any = await ollama.show({ model: 'large' }).catch((e: unknown) => e);
    t.equal(shown.status_code, 404, '/api/show: not found for it');

    // A credential that is wrong is refused where it is sent, in the route's API shape.
    const wrong = await get('/v1/models', 'sk-mistyped');
    t.equal(wrong.status, 401);
    t.match(await wrong.json(), { error: { code: 'unauthorized' } });
    const wrongTags = await get('/api/tags', 'sk-mistyped');
    t.equal(wrongTags.status, 401);
    t.match(await wrongTags.json(), { error: /unknown or revoked/ });
    t.equal((await get('/v1/models/small', 'sk-mistyped')).status, 401);
  });
}

t.test('AUTH_MODE=open: an unknown key lists as anyone (no tier of its own), a known one its tier', async (t) => {
  const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', BROKER_FF_QOS_SWITCHING: 'true' });
  const ids = async (key: string) => (((await (await fetch(`${tb.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).json()) as { data: { id: string }[] }).data.map((x) => x.id).sort());
  t.same(await ids('sk-anyone'), ['large', 'small']);
  t.same(await ids(BATCH), ['small']);
  // Without a credential: the default tier's groups (what such a caller may use).
  const narrow = await startFleetBroker(t, { ...fleet, qos: { ...fleet.qos, defaultTier: 'batch' } }, { INFER_ENABLED: 'false', BROKER_FF_QOS_SWITCHING: 'true' });
  const keyless = (await (await fetch(`${narrow.url}/v1/models`)).json()) as { data: { id: string }[] };
  t.same(keyless.data.map((x) => x.id), ['small'], "no credential: the default tier's groups");
});
