import t from 'tap';
import { promptParts } from '../../../src/llm/request.ts';
import { StickyPins, prefixKey } from '../../../src/policy/sticky.ts';
import { fakeClock } from './helpers.ts';

/** The sticky key of a client body, read as the front reads it. */
const key = (body: Record<string, unknown>, group: string, maxBytes: number) => prefixKey(promptParts(body), group, maxBytes);

t.test('a pin lasts its TTL on the injected clock', async (t) => {
  const clock = fakeClock();
  const pins = new StickyPins(1_000, 10, clock.read);
  t.equal(pins.get('k'), undefined);
  pins.pin('k', 'dep-a');
  t.equal(pins.get('k'), 'dep-a');
  clock.advance(999);
  t.equal(pins.get('k'), 'dep-a', 'still there 1 ms before expiry');
  clock.advance(1);
  t.equal(pins.get('k'), undefined, 'gone at the TTL');
  t.equal(pins.size, 0, 'the expired pin is removed, not only hidden');
});

t.test('pinning again moves the pin and renews its TTL', async (t) => {
  const clock = fakeClock();
  const pins = new StickyPins(1_000, 10, clock.read);
  pins.pin('k', 'dep-a');
  clock.advance(800);
  pins.pin('k', 'dep-b');
  clock.advance(800);
  t.equal(pins.get('k'), 'dep-b', 'renewed: 1600 ms after the first pin, 800 after the second');
  t.equal(pins.size, 1);
  pins.drop('k');
  t.equal(pins.get('k'), undefined);
  pins.drop('never-pinned'); // no effect, no throw
  t.equal(pins.size, 0);
});

t.test('maxPins: a new key evicts the oldest pin; re-pinning a key makes it the newest', async (t) => {
  const clock = fakeClock();
  const pins = new StickyPins(60_000, 3, clock.read);
  pins.pin('a', '1');
  pins.pin('b', '2');
  pins.pin('c', '3');
  pins.pin('a', '1'); // a is now the newest; b the oldest
  t.equal(pins.size, 3, 're-pinning an existing key evicts nothing');
  pins.pin('d', '4');
  t.equal(pins.size, 3);
  t.equal(pins.get('b'), undefined, 'the oldest went');
  t.equal(pins.get('a'), '1');
  t.equal(pins.get('c'), '3');
  t.equal(pins.get('d'), '4');
  pins.pin('e', '5');
  t.equal(pins.get('c'), undefined, 'then the next oldest');
  t.equal(pins.size, 3);
});

const chat = (system: string, user: string, more: string[] = []) => ({
  messages: [{ role: 'system', content: system }, { role: 'user', content: user }, ...more.map((c) => ({ role: 'user', content: c }))],
});

t.test('prefixKey: same prefix, same key; different system prompt or group, different key', async (t) => {
  const k = key(chat('You are terse.', 'hi'), 'g', 2048);
  t.type(k, 'string');
  t.equal(key(chat('You are terse.', 'hi'), 'g', 2048), k, 'stable');
  t.equal(key({ ...chat('You are terse.', 'hi'), temperature: 0.2, model: 'x' }, 'g', 2048), k, 'other fields do not matter');
  t.not(key(chat('You are verbose.', 'hi'), 'g', 2048), k, 'another system prompt');
  t.not(key(chat('You are terse.', 'hi'), 'h', 2048), k, 'another group');
  t.not(key(chat('You are terse.', 'hello'), 'g', 2048), k, 'another first user message');
  // Only the first three messages count: what comes later is the part that changes per turn.
  t.equal(key(chat('s', 'u', ['third', 'fourth']), 'g', 2048), key(chat('s', 'u', ['third', 'other fourth']), 'g', 2048));
  t.not(key(chat('s', 'u', ['third']), 'g', 2048), key(chat('s', 'u', ['other third']), 'g', 2048));
  // Structured content counts by its JSON.
  const parts = (text: string) => ({ messages: [{ role: 'user', content: [{ type: 'text', text }] }] });
  t.equal(key(parts('a'), 'g', 2048), key(parts('a'), 'g', 2048));
  t.not(key(parts('a'), 'g', 2048), key(parts('b'), 'g', 2048));
});

t.test('prefixKey: prompt and system of the Ollama generate API', async (t) => {
  const k = key({ prompt: 'Once upon a time' }, 'g', 2048);
  t.type(k, 'string');
  t.not(key({ prompt: 'Once upon a time', system: 'be brief' }, 'g', 2048), k, 'a system prompt changes it');
  t.not(key({ prompt: 'Once upon a time', system: 'be brief' }, 'g', 2048), key({ prompt: 'Once upon a time', system: 'be long' }, 'g', 2048));
  t.equal(key({}, 'g', 2048), undefined, 'nothing to key on');
  t.equal(key({ messages: [] }, 'g', 2048), undefined);
  t.equal(key({ prompt: '' }, 'g', 2048), undefined);
});

t.test('prefixKey: only the first maxBytes bytes count', async (t) => {
  const head = 'x'.repeat(100);
  t.equal(key({ prompt: head + 'AAAA' }, 'g', 100), key({ prompt: head + 'BBBB' }, 'g', 100), 'differences past maxBytes are ignored');
  t.not(key({ prompt: head + 'AAAA' }, 'g', 101), key({ prompt: head + 'BBBB' }, 'g', 101), 'one byte more and they differ');
  // The bound is in bytes, not characters: 'é' is two bytes in UTF-8.
  const wide = 'é'.repeat(50); // 100 bytes
  t.equal(key({ prompt: wide + 'A' }, 'g', 100), key({ prompt: wide + 'B' }, 'g', 100));
  t.not(key({ prompt: 'é'.repeat(49) + 'A' }, 'g', 100), key({ prompt: 'é'.repeat(49) + 'B' }, 'g', 100));
  // Long first messages: later messages past the bound do not count either.
  const long = chat('s'.repeat(500), 'first question');
  t.equal(key(long, 'g', 64), key(chat('s'.repeat(500), 'second question'), 'g', 64));
});
