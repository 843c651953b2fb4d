// workerEntry: from the sources a worker starts in ts-entry.mjs with `entry` added to the
// caller's data; compiled, it is the .js module itself with the caller's data untouched.
// A plain worker_threads Worker runs through it (Piscina's path is test/infer).
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { mkdirSync, mkdtempSync, realpathSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { workerEntry } from '../../src/workers/entry.ts';

// This test's .ts source, as the base of a caller run from the sources, also when the test
// runs compiled (`npm test`: .test-build/, where each .ts is linked in next to its .js).
const HERE = new URL('./entry.test.ts', import.meta.url).href;
/** A file URL's real path: tsx loads a linked .ts from where the link points. */
const real = (url: string): string => realpathSync(fileURLToPath(url.split('?')[0]!));

t.test('from TypeScript: ts-entry.mjs, with entry beside the caller data', async (t) => {
  const port = new SharedArrayBuffer(4);
  const { filename, workerData } = workerEntry('./fixtures/echo-worker.ts', HERE, { greeting: 'hi', port });
  t.equal(filename, fileURLToPath(new URL('../../src/workers/ts-entry.mjs', import.meta.url)));
  t.equal(workerData.entry, new URL('./fixtures/echo-worker.ts', import.meta.url).href);
  t.equal(workerData.greeting, 'hi');
  t.equal(workerData.port, port, 'a shallow copy: shared memory and ports stay the same objects');

  const worker = new Worker(filename, { workerData });
  const [msg] = (await Promise.race([
    new Promise((resolve, reject) => {
      worker.once('message', (m) => resolve([m]));
      worker.once('error', reject);
    }),
    new Promise((_, reject) => setTimeout(() => reject(new Error('worker did not answer in 30 s')), 30_000).unref()),
  ])) as [{ workerData: Record<string, unknown>; url: string; greeting: string }];
  await worker.terminate();
  t.equal(msg.greeting, 'HI', 'the TypeScript worker ran');
  t.equal(real(msg.url), real(workerData.entry!), 'tsx loaded the entry (tsImport adds a ?tsx-namespace query)');
  t.same(Object.keys(msg.workerData).sort(), ['entry', 'greeting', 'port']);
});

t.test('compiled: the .js module itself, the caller data as given', async (t) => {
  const base = 'file:///app/dist/infer/pool.js';
  const e = workerEntry('./worker.ts', base, { threads: 2 });
  t.equal(e.filename, '/app/dist/infer/worker.js');
  t.same(e.workerData, { threads: 2 });
  t.notOk('entry' in e.workerData);
  t.same(workerEntry('../plane/worker.ts', base).workerData, {});
  t.equal(workerEntry('../plane/worker.ts', base).filename, '/app/dist/plane/worker.js');
});

t.test('WORKERS_FROM_DIST=1: a worker of src/ starts from its twin in dist/, when there is one', async (t) => {
  const app = mkdtempSync(join(tmpdir(), 'eb-entry-'));
  mkdirSync(join(app, 'dist', 'plane'), { recursive: true });
  writeFileSync(join(app, 'dist', 'plane', 'worker.js'), '');
  const planes = pathToFileURL(join(app, 'src', 'plane', 'planes.ts')).href;
  const pool = pathToFileURL(join(app, 'src', 'infer', 'pool.ts')).href;
  const tsEntry = fileURLToPath(new URL('../../src/workers/ts-entry.mjs', import.meta.url));
  const saved = process.env.WORKERS_FROM_DIST;
  t.teardown(() => (saved === undefined ? delete process.env.WORKERS_FROM_DIST : (process.env.WORKERS_FROM_DIST = saved)));

  process.env.WORKERS_FROM_DIST = '1';
  const e = workerEntry('./worker.ts', planes, { index: 1 });
  t.equal(e.filename, join(app, 'dist', 'plane', 'worker.js'), 'the compiled twin');
  t.same(e.workerData, { index: 1 }, 'no entry: nothing of tsx');
  t.equal(workerEntry('./worker.ts', pool).filename, tsEntry, 'no twin built: from the sources');
  t.equal(workerEntry('./fixtures/echo-worker.ts', HERE).filename, tsEntry, 'not under src/: from the sources');

  delete process.env.WORKERS_FROM_DIST;
  t.equal(workerEntry('./worker.ts', planes).filename, tsEntry, 'unset: from the sources');
});

t.test('refuses what it cannot start', async (t) => {
  const base = HERE;
  t.throws(() => workerEntry('./worker.js', base), /relative \.ts specifier/);
  t.throws(() => workerEntry('worker.ts', base), /relative \.ts specifier/);
  t.throws(() => workerEntry('./worker.ts', base, { entry: 'x' }), /reserved/);
  t.throws(() => workerEntry('./worker.ts', 'file:///app/dist/pool.mjs'), /\.ts or \.js module/);
});
