// Threaded, the control plane's response cache serves nothing (the data-plane threads serve the
// client APIs; gRPC does not use the cache): it keeps no entries, heard from the threads or its
// own, yet its flush (the admin route) still empties the threads'. Its copy of every entry was
// memory nothing read. And an entry's bookkeeping counts in maxBytes.
import t from 'tap';
import { randomUUID } from 'node:crypto';
import { DEFAULT_CACHE } from '../../src/config/broker-config.ts';
import { ResponseCache } from '../../src/llm/cache/cache.ts';
import { createLogger } from '../../src/obs/logger.ts';
import { createMetrics } from '../../src/obs/metrics.ts';

const quiet = createLogger('silent');
const entry = { v: 1 as const, kind: 'chat' as const, chunks: ['hi'], finish: 'stop', promptTokens: 1, completionTokens: 1 };

t.test('a cache that holds no entries keeps none, and its flush empties the others', async (t) => {
  const channel = `eb-test-${randomUUID()}`;
  const threadMetrics = createMetrics();
  const controlMetrics = createMetrics();
  const settings = { ...DEFAULT_CACHE, mode: 'on' as const };
  const thread = new ResponseCache({ settings, metrics: threadMetrics, logger: quiet, channel });
  const control = new ResponseCache({ settings, metrics: controlMetrics, logger: quiet, channel, holdsEntries: false });
  t.teardown(() => {
    thread.close();
    control.close();
  });
  const plan = (key: string) => ({ key, lookup: true, store: true });
  thread.put(plan('a'), 'g', entry, Date.now());
  control.put(plan('b'), 'g', entry, Date.now());
  await new Promise((r) => setTimeout(r, 100));
  t.same(thread.get(plan('a'), 'g'), entry, 'the thread keeps its own');
  t.equal(control.get(plan('a'), 'g'), undefined, "the control plane keeps none of the thread's");
  t.equal(control.get(plan('b'), 'g'), undefined, 'nor of its own');
  t.equal(controlMetrics.sources.cacheBytes?.(), 0, 'no bytes counted there');
  // An entry costs its key and reply, and its bookkeeping (400 bytes).
  t.ok(threadMetrics.sources.cacheBytes!() >= 400 + 1, `the thread's one entry: ${threadMetrics.sources.cacheBytes!()} bytes`);
  await control.flush();
  await new Promise((r) => setTimeout(r, 100));
  t.equal(thread.get(plan('a'), 'g'), undefined, "the control plane's flush reached the thread");
});

t.test('an entry near maxEntryBytes: counted as stored only when the memory LRU holds it (its bookkeeping counted alike)', async (t) => {
  const metrics = createMetrics();
  const cache = new ResponseCache({ settings: { ...DEFAULT_CACHE, mode: 'on' as const, maxEntryBytes: 4096 }, metrics, logger: quiet });
  t.teardown(() => cache.close());
  const key = 'k'.repeat(100);
  for (const n of [1500, 1800, 1900, 3000]) {
    const before = (await metrics.llmCacheStores.get()).values.reduce((a, v) => a + v.value, 0);
    cache.put({ key: key + n, lookup: true, store: true }, 'g', { ...entry, chunks: ['x'.repeat(n)] }, Date.now());
    const counted = (await metrics.llmCacheStores.get()).values.reduce((a, v) => a + v.value, 0) - before;
    const held = cache.get({ key: key + n, lookup: true, store: true }, 'g') !== undefined;
    t.equal(held, counted === 1, `${n} characters: ${counted === 1 ? 'stored and held' : 'not stored'}`);
  }
});
