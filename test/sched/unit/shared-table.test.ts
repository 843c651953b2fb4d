// The shared hash table on one thread: two views of one buffer stand in for two
// threads here; test/sched/unit/cross-thread.test.ts runs real worker threads.
import t from 'tap';
import { SharedTable, keyHash, PROBES } from '../../../src/sched/shared-table.ts';

t.test('same key → same slot from any view of the buffer; distinct keys → distinct slots', async (t) => {
  const a = new SharedTable(4096);
  const b = new SharedTable(4096, a.buffer); // another thread would attach the same way
  const keys = Array.from({ length: 2000 }, (_, i) => `key:${i}`);
  const slots = keys.map((k) => a.acquire(k));
  t.notOk(slots.includes(-1), 'every key got a slot at ~50% load');
  t.equal(new Set(slots).size, keys.length, 'no two keys share a slot');
  t.same(keys.map((k) => b.find(k)), slots, 'the other view finds the same slots');
  t.same(keys.map((k) => b.acquire(k)), slots, 'and acquiring again inserts nothing');
  t.equal(b.size, 2000);
  t.equal(b.find('key:absent'), -1);
  t.equal(b.keyOf(slots[1234]!), 'key:1234', 'key text is readable from the other view');
});

t.test('a full probe window: -1 without hooks, the table is never swept', async (t) => {
  const table = new SharedTable(4);
  const slots = ['a', 'b', 'c', 'd'].map((k) => table.acquire(k));
  t.same([...slots].sort(), [0, 1, 2, 3]);
  t.equal(table.acquire('e'), -1, 'no free slot and nothing reclaimable');
  t.equal(table.lockKey('e'), -1);
  t.equal(table.size, 4);
  t.same(['a', 'b', 'c', 'd'].map((k) => table.find(k)), slots, 'existing keys are still found');
});

t.test('reclaim: a slot whose owner says it is stale goes to the new key, initialised', async (t) => {
  const table = new SharedTable(4, undefined, { payloadBytes: 8 });
  const f64 = new Float64Array(table.buffer);
  const cell = (slot: number) => table.payloadOffset(slot) >> 3;
  const lastUsed = new Map<string, number>([['a', 50], ['b', 10], ['c', 70], ['d', 90]]);
  const hooks = {
    inits: [] as number[],
    init(slot: number) {
      this.inits.push(slot);
      f64[cell(slot)] = 100; // "last used" now
    },
    stale: (slot: number) => f64[cell(slot)]! < 20,
  };
  for (const [k, used] of lastUsed) {
    const s = table.acquire(k, hooks);
    f64[cell(s)] = used;
  }
  const bSlot = table.find('b');
  const eSlot = table.lockKey('e', hooks);
  t.equal(eSlot, bSlot, 'the stale slot (b, idle since 10) was taken');
  t.ok(table.holds(eSlot, 'e'));
  table.unlock(eSlot);
  t.equal(f64[cell(eSlot)], 100, 'init ran on the reclaimed slot');
  t.equal(table.find('b'), -1, 'b is forgotten');
  t.equal(table.keyOf(eSlot), 'e');
  t.equal(table.size, 4, 'a reclaim keeps the count');
  t.equal(table.acquire('f', hooks), -1, 'nothing else is stale');
});

t.test('evictLru takes the least recently touched slot of the window', async (t) => {
  const table = new SharedTable(3);
  const lru = { evictLru: true };
  const [a, b, c] = ['a', 'b', 'c'].map((k) => table.acquire(k, lru)) as [number, number, number];
  table.touch(a);
  table.touch(c);
  t.equal(table.acquire('d', lru), b, 'b was touched least recently');
  table.touch(a);
  t.equal(table.acquire('e', lru), c);
  t.equal(table.find('a'), a);
});

t.test('release leaves a tombstone: keys probed past it stay reachable, the slot is reused', async (t) => {
  // With 2 slots, whichever of x/y went second sits one probe past the other.
  const table = new SharedTable(2);
  const x = table.acquire('x');
  const y = table.acquire('y');
  const first = Math.min(x, y) === x && keyHash('x')[0] % 2 === x ? 'x' : 'y';
  const second = first === 'x' ? 'y' : 'x';
  const s1 = table.find(first);
  table.lock(s1);
  table.release(s1);
  table.unlock(s1);
  t.equal(table.size, 1);
  t.equal(table.find(first), -1);
  t.equal(table.find(second), second === 'x' ? x : y, 'found past the tombstone');
  t.equal(table.acquire(second), second === 'x' ? x : y, 'not inserted twice');
  t.equal(table.acquire('z'), s1, 'the tombstone is reused');
  t.equal(table.size, 2);
});

t.test('key text is bounded and truncated on a code point boundary', async (t) => {
  const table = new SharedTable(8, undefined, { keyBytes: 8 });
  const s = table.acquire('abcdefgé€'); // é ends at byte 9: does not fit in 8
  t.equal(table.keyOf(s), 'abcdefg…');
  const none = new SharedTable(8, undefined, { keyBytes: 0 });
  t.equal(none.keyOf(none.acquire('k')), undefined, 'no arena, no text');
});

t.test('attaching checks the layout; hashes are 64-bit and stable', async (t) => {
  const a = new SharedTable(16, undefined, { payloadBytes: 16 });
  t.throws(() => new SharedTable(32, a.buffer, { payloadBytes: 16 }), /too small/);
  t.throws(() => new SharedTable(16, a.buffer, { payloadBytes: 8 }), /another layout/);
  t.throws(() => new SharedTable(8, a.buffer, { payloadBytes: 16 }), /another layout/);
  t.equal(SharedTable.capacityOf(a.buffer), 16);
  t.same(keyHash('key:a'), keyHash('key:a'));
  t.not(keyHash('ab')[0], keyHash('ba')[0]);
  t.not(keyHash('ab')[1], keyHash('ba')[1]);
  t.equal(PROBES, 16);
  // Two tables in one buffer, one after the other.
  const first = SharedTable.byteLength(8);
  const buf = new SharedArrayBuffer(first + SharedTable.byteLength(8));
  const t1 = new SharedTable(8, buf);
  const t2 = new SharedTable(8, buf, { byteOffset: first });
  t1.acquire('k');
  t.equal(t2.find('k'), -1, 'the tables do not overlap');
  t.equal(t2.size, 0);
});

t.test('probing is bounded: a key is looked for in at most 16 slots, never a sweep', async (t) => {
  const table = new SharedTable(1024);
  const target = 'the-key';
  const window = table.probeSlots(target);
  t.equal(window.length, PROBES);
  t.equal(new Set(window).size, PROBES, '16 distinct slots');
  // Fill exactly those 16 slots (each with a key homed there) in a table that is otherwise empty.
  for (const slot of window) {
    let i = 0;
    while (table.probeSlots(`k${i}`)[0] !== slot || table.find(`k${i}`) >= 0) i++;
    t.equal(table.acquire(`k${i}`), slot);
  }
  t.equal(table.acquire(target), -1, 'no slot for it although 1008 are free');
  t.equal(table.size, 16);
  t.not(table.acquire('another-key'), -1, 'other keys still fit');
});
