import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerConfigError } from '../../src/config/broker-config.ts';
import { loadBrokerConfigFile, parseBrokerConfig } from '../../src/config/fleet-file.ts';

const good = {
  upstream: { idleTimeoutMs: 1000 },
  modelGroups: {
    'chat-small': {
      deployments: [
        { id: 'ollama-1', provider: 'ollama', url: 'http://127.0.0.1:11434', model: 'llama3.2:1b', concurrencyLimit: 8, weight: 1 },
        { id: 'openai-1', provider: 'openai', url: 'https://api.example.com/v1', model: 'gpt-x', apiKeyEnv: 'MY_KEY', connectTimeoutMs: 200 },
      ],
    },
  },
};

t.test('a good config, with defaults and the key read from env', async (t) => {
  const c = parseBrokerConfig(good, 'x', { MY_KEY: 'sk-1' });
  const [a, b] = c.modelGroups.get('chat-small')!.deployments;
  t.equal(a!.idleTimeoutMs, 1000, 'upstream defaults apply');
  t.equal(b!.apiKey, 'sk-1');
  t.equal(b!.connectTimeoutMs, 200, 'per-deployment override');
  t.equal(b!.concurrencyLimit, 64);
});

t.test("a key env var with a character a header cannot carry (a secret file's trailing newline) stops the start, naming it", async (t) => {
  // Sent on, undici refused every request to the deployment before it left.
  const err = t.throws(() => parseBrokerConfig(good, 'x', { MY_KEY: 'sk-1\n' })) as BrokerConfigError;
  t.equal(err.path, 'modelGroups.chat-small.deployments[1].apiKeyEnv');
  t.match(err.message, /MY_KEY holds a character an HTTP header cannot carry \(a trailing newline\?\)/);
});

t.test('errors name the path of the bad field', async (t) => {
  const bad = (mutate: (c: any) => void): unknown => {
    const c = structuredClone(good) as any;
    mutate(c);
    return c;
  };
  const cases: [unknown, string][] = [
    [bad((c) => (c.modelGroups['chat-small'].deployments[0].url = 'ftp://x')), 'modelGroups.chat-small.deployments[0].url'],
    [bad((c) => (c.modelGroups['chat-small'].deployments[1].provider = 'bedrock')), 'modelGroups.chat-small.deployments[1].provider'],
    [bad((c) => (c.modelGroups['chat-small'].deployments[0].concurrencyLimit = 0)), 'modelGroups.chat-small.deployments[0].concurrencyLimit'],
    [bad((c) => (c.modelGroups['chat-small'].deployments[0].colour = 'red')), 'modelGroups.chat-small.deployments[0].colour'],
    [bad((c) => (c.modelGroups['chat-small'].deployments[1].id = 'ollama-1')), 'modelGroups.chat-small.deployments[1].id'],
    [bad((c) => (c.modelGroups['chat-small'].deployments = [])), 'modelGroups.chat-small.deployments'],
    [bad((c) => (c.upstream.idleTimeoutMs = -5)), 'upstream.idleTimeoutMs'],
    [bad((c) => delete c.modelGroups), 'modelGroups'],
  ];
  for (const [config, path] of cases) {
    const err = t.throws(() => parseBrokerConfig(config, 'x', { MY_KEY: 'k' })) as BrokerConfigError;
    t.equal(err.path, path);
  }
  const noKey = t.throws(() => parseBrokerConfig(good, 'x', {})) as BrokerConfigError;
  t.equal(noKey.path, 'modelGroups.chat-small.deployments[1].apiKeyEnv');
  t.match(noKey.message, /MY_KEY/);
});

t.test('YAML and JSON files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'eb-cfg-'));
  writeFileSync(join(dir, 'a.yaml'), 'modelGroups:\n  g:\n    deployments:\n      - id: d\n        provider: ollama\n        url: http://127.0.0.1:1\n        model: m\n');
  t.equal(loadBrokerConfigFile(join(dir, 'a.yaml')).modelGroups.get('g')!.deployments[0]!.model, 'm');
  writeFileSync(join(dir, 'b.json'), '{"modelGroups": ');
  t.throws(() => loadBrokerConfigFile(join(dir, 'b.json')), /not valid JSON/);
  t.throws(() => loadBrokerConfigFile(join(dir, 'missing.yaml')), /cannot read/);
  t.throws(() => loadBrokerConfigFile('config/broker.example.yaml', {}), /OPENAI_API_KEY/, 'the example names its key variable');
  const example = loadBrokerConfigFile('config/broker.example.yaml', { OPENAI_API_KEY: 'sk', TEAM_BATCH_KEY: 'sk-team' });
  t.ok(example.modelGroups.size >= 1, 'the example is valid');
  t.equal(example.apiKeys.get('sk-team')?.tier, 'batch', 'API keys come from their env var');
  t.equal(example.qos.tiers.get('batch')?.capacityShare, 0.5);
  t.equal(example.scheduler.maxQueue, 1000);
  t.equal(example.ptu[0]?.capacityTpm, 100000);
});

t.test('fallbacks, context windows, cache modes and the per-phase timeouts', async (t) => {
  const base = (extra: Record<string, unknown>, group: Record<string, unknown> = {}) => ({
    ...extra,
    modelGroups: {
      small: { deployments: [{ id: 's', provider: 'ollama', url: 'http://127.0.0.1:1', model: 'm' }], ...group },
      large: { deployments: [{ id: 'l', provider: 'ollama', url: 'http://127.0.0.1:2', model: 'm', idleTimeoutMs: 700 }] },
    },
  });
  const c = parseBrokerConfig(base({ upstream: { firstTokenTimeoutMs: 90_000, idleChunkTimeoutMs: 5_000 }, cache: { mode: 'deterministic', maxBytes: 1000 } }, { fallbacks: ['large'], contextFallbacks: ['large'], maxContextTokens: 4096, cache: 'on' }), 'x', {});
  const small = c.modelGroups.get('small')!;
  t.same(small.fallbacks, ['large']);
  t.same(small.contextFallbacks, ['large']);
  t.equal(small.maxContextTokens, 4096);
  t.equal(small.cache, 'on');
  t.equal(c.modelGroups.get('large')!.cache, undefined, 'no mode of its own: the file default applies');
  t.same(c.cache, { mode: 'deterministic', scope: 'shared', maxBytes: 1000, ttlSeconds: 3600, maxEntryBytes: 1024 * 1024 });
  const s = small.deployments[0]!;
  t.equal(s.firstTokenTimeoutMs, 90_000);
  t.equal(s.idleChunkTimeoutMs, 5_000);
  t.equal(s.idleTimeoutMs, 5_000, 'the older name reads the same value');
  t.equal(s.totalTimeoutMs, 600_000, 'default total');
  // A non-streamed reply's headers come when the whole answer is generated: not cut at 60 s.
  t.equal(s.headersTimeoutMs, 600_000, "a whole reply's headers: as long as the attempt by default");
  const totals = parseBrokerConfig(base({ upstream: { totalTimeoutMs: 900_000 } }, {}), 'x', {});
  t.equal(totals.modelGroups.get('small')!.deployments[0]!.headersTimeoutMs, 900_000, 'unset, it follows the total');
  t.equal(totals.modelGroups.get('large')!.deployments[0]!.headersTimeoutMs, 900_000, 'a deployment inherits it');
  const none = parseBrokerConfig(base({ upstream: { totalTimeoutMs: 0 } }), 'x', {});
  t.equal(none.modelGroups.get('small')!.deployments[0]!.headersTimeoutMs, 0, 'no total: no headers limit either');
  const own = parseBrokerConfig(base({ upstream: { totalTimeoutMs: 900_000, headersTimeoutMs: 20_000 } }), 'x', {});
  t.equal(own.modelGroups.get('small')!.deployments[0]!.headersTimeoutMs, 20_000, 'set, it is its own');
  const above = parseBrokerConfig(base({ upstream: { headersTimeoutMs: 20_000 } }, {}), 'x', {});
  const withTotal = parseBrokerConfig({ ...base({ upstream: { headersTimeoutMs: 20_000 } }), modelGroups: { small: { deployments: [{ id: 's', provider: 'ollama', url: 'http://127.0.0.1:1', model: 'm', totalTimeoutMs: 900_000 }] } } }, 'x', {});
  t.equal(above.modelGroups.get('small')!.deployments[0]!.headersTimeoutMs, 20_000, 'set above: inherited');
  t.equal(withTotal.modelGroups.get('small')!.deployments[0]!.headersTimeoutMs, 20_000, "set above, a deployment's own total does not replace it");
  const l = c.modelGroups.get('large')!.deployments[0]!;
  t.equal(l.idleChunkTimeoutMs, 700, 'idleTimeoutMs, the older name, still sets the idle-chunk timeout');
  t.equal(s.upstreamStreaming, 'auto', 'non-streamed requests stream from Ollama upstreams, as asked from the others, unless told');
  const streaming = parseBrokerConfig({ ...base({ upstream: { upstreamStreaming: 'client' } }), modelGroups: { small: { deployments: [{ id: 's', provider: 'ollama', url: 'http://127.0.0.1:1', model: 'm' }, { id: 's2', provider: 'ollama', url: 'http://127.0.0.1:3', model: 'm', upstreamStreaming: 'always' }] } } }, 'x', {});
  t.same(streaming.modelGroups.get('small')!.deployments.map((d) => d.upstreamStreaming), ['client', 'always'], 'set above, inherited; a deployment may set its own');
  const streamingBad = t.throws(() => parseBrokerConfig(base({ upstream: { upstreamStreaming: 'sometimes' } }), 'x', {})) as BrokerConfigError;
  t.equal(streamingBad.path, 'upstream.upstreamStreaming');
  t.match(streamingBad.message, /must be auto, always or client/);
  t.equal(parseBrokerConfig(base({}), 'x', {}).cache.mode, 'off', 'the cache is off unless the file says');
  const unknown = t.throws(() => parseBrokerConfig(base({}, { fallbacks: ['nope'] }), 'x', {})) as BrokerConfigError;
  t.equal(unknown.path, 'modelGroups.small.fallbacks[0]');
  t.match(unknown.message, /no model group nope/);
  const self = t.throws(() => parseBrokerConfig(base({}, { contextFallbacks: ['large', 'small'] }), 'x', {})) as BrokerConfigError;
  t.equal(self.path, 'modelGroups.small.contextFallbacks[1]');
  // An alias clients use (an Ollama group's name without :latest) may be named as a fallback, not as the group's own.
  const aliased = { modelGroups: { 'llama3.2:latest': { deployments: [{ id: 'o1', provider: 'ollama', url: 'http://127.0.0.1:1', model: 'llama3.2' }] }, x: { deployments: [{ id: 'x1', provider: 'openai', url: 'http://127.0.0.1:1', model: 'm' }], fallbacks: ['llama3.2'] } } };
  t.same(parseBrokerConfig(aliased, 'x', {}).modelGroups.get('x')!.fallbacks, ['llama3.2']);
  const selfAlias = { modelGroups: { 'llama3.2:latest': { deployments: [{ id: 'o1', provider: 'ollama', url: 'http://127.0.0.1:1', model: 'llama3.2' }], fallbacks: ['llama3.2'] } } };
  t.throws(() => parseBrokerConfig(selfAlias, 'x', {}), { message: /cannot fall back to itself/ });
  const mode = t.throws(() => parseBrokerConfig(base({}, { cache: 'sometimes' }), 'x', {})) as BrokerConfigError;
  t.equal(mode.path, 'modelGroups.small.cache');
  // Past 2^31 - 1 ms Node fires a timer after 1 ms: refused, not a timeout that fires at once.
  const huge = t.throws(() => parseBrokerConfig(base({ upstream: { firstTokenTimeoutMs: 3_000_000_000 } }), 'x', {})) as BrokerConfigError;
  t.equal(huge.path, 'upstream.firstTokenTimeoutMs');
  t.match(huge.message, /<= 2147483647/);
  t.equal(parseBrokerConfig(base({ upstream: { totalTimeoutMs: 2_147_483_647 } }), 'x', {}).modelGroups.get('small')!.deployments[0]!.totalTimeoutMs, 2_147_483_647, 'the largest timer is accepted');
  const example = loadBrokerConfigFile('config/broker.example.yaml', { OPENAI_API_KEY: 'sk', TEAM_BATCH_KEY: 'sk-team' });
  t.same(example.modelGroups.get('chat-small')!.fallbacks, ['chat-large'], 'the example shows fallbacks');
});

t.test('an API key written in the file is never in an error about its entry: named by its id', async (t) => {
  const { keyId } = await import('../../src/guard/api-key.ts');
  const groups = { modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: 'http://127.0.0.1:1', model: 'm' }] } } };
  const secret = 'sk-SUPERSECRET-abc123';
  for (const entry of [{ tier: 'gold' }, { rpm: 0 }, { colour: 'red' }]) {
    let caught: BrokerConfigError | undefined;
    try {
      parseBrokerConfig({ ...groups, apiKeys: { [secret]: entry } }, 'test', {});
    } catch (err) {
      caught = err as BrokerConfigError;
    }
    t.ok(caught instanceof BrokerConfigError, `${JSON.stringify(entry)} refused`);
    t.notMatch(`${caught?.message} ${caught?.path}`, /SUPERSECRET/, `${JSON.stringify(entry)}: the key is not in the error`);
    t.match(caught?.path, new RegExp(`^apiKeys\\.${keyId(secret)}\\.`), 'named by its id');
  }
  // A key from keyEnv has a name that is no secret: that name is kept.
  t.throws(() => parseBrokerConfig({ ...groups, apiKeys: { 'team-a': { keyEnv: 'TEAM_A', tier: 'gold' } } }, 'test', { TEAM_A: 'sk-x' }), /apiKeys\.team-a\.tier/);
  // Two names for one key: the later's limits held for both, silently.
  const twice = (() => {
    try {
      parseBrokerConfig({ ...groups, apiKeys: { 'team-a': { keyEnv: 'TEAM_A', rpm: 100 }, 'team-b': { keyEnv: 'TEAM_B', rpm: 1 } } }, 'test', { TEAM_A: 'sk-same', TEAM_B: 'sk-same' });
    } catch (err) {
      return err as { path?: string; message: string };
    }
    return undefined;
  })();
  t.equal(twice?.path, 'apiKeys.team-b.keyEnv', 'the second entry with the same key is refused');
  t.match(twice?.message, new RegExp(`same API key \\(${keyId('sk-same')}\\)`));
  t.notMatch(twice?.message, /sk-same/, 'named by its id');
});

t.test('a fleet file that does not parse: what and where, never its lines (they hold keys and URLs with passwords)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'eb-syntax-'));
  const yamlPath = join(dir, 'fleet.yaml');
  writeFileSync(yamlPath, 'apiKeys:\n  sk-very-secret-key-1: {}\nmodelGroups:\n  g: : x\n    url: http://user:hunter2@up:8000\n');
  const yamlErr = (() => {
    try {
      loadBrokerConfigFile(yamlPath);
    } catch (err) {
      return err as Error;
    }
  })();
  t.ok(yamlErr instanceof BrokerConfigError);
  t.match(yamlErr!.message, /is not valid YAML: .+ at line 4, column \d+/);
  t.notMatch(yamlErr!.message, /sk-very-secret|hunter2/, 'no line of the file quoted');
  const jsonPath = join(dir, 'fleet.json');
  for (const text of ['{"apiKeys": {"sk-very-secret-key-2": {}} x}', 'sk-very-secret-key-3']) {
    writeFileSync(jsonPath, text);
    const msg = (() => {
      try {
        loadBrokerConfigFile(jsonPath);
      } catch (err) {
        return (err as Error).message;
      }
      return '';
    })();
    t.match(msg, /is not valid JSON: /);
    t.notMatch(msg, /sk-very-secret/, `nothing of ${text.length} chars quoted: ${msg}`);
  }
});

t.test("a model a group routes on a declared server is no group of its own, however the server names it (llama3.2 is Ollama's llama3.2:latest)", async (t) => {
  const doc = {
    servers: [{ id: 'srv', url: 'http://127.0.0.1:11434', provider: 'ollama' }],
    modelGroups: { chat: { deployments: [{ server: 'srv', model: 'llama3.2' }, { server: 'srv', model: 'qwen:7b' }] } },
  };
  // What the server's health check lists: Ollama's full names, and one model no group routes.
  const c = parseBrokerConfig(doc, 'x', {}, new Map([['srv', ['llama3.2:latest', 'qwen:7b', 'phi3:latest']]]));
  // (modelGroups is keyed by every name a group answers to: its name and its :latest alias.)
  const names = (m: typeof c.modelGroups): string[] => [...new Set([...m.values()].map((g) => g.name))].sort();
  t.same(names(c.modelGroups), ['chat', 'phi3:latest'], 'only the unrouted model joins a group of its own name');
  t.same(c.modelGroups.get('chat')!.deployments.map((d) => d.model), ['llama3.2', 'qwen:7b']);
  // The other way round: the group names the tag, the server lists it bare (an OpenAI-compatible lister).
  const d = parseBrokerConfig({ ...doc, modelGroups: { chat: { deployments: [{ server: 'srv', model: 'mistral:latest' }] } } }, 'x', {}, new Map([['srv', ['mistral']]]));
  t.same(names(d.modelGroups), ['chat']);
});
