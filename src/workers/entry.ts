// Where a worker thread starts, for a Piscina pool or a plain node:worker_threads Worker.
//
// Compiled (`npm start` runs dist/), the worker is the compiled `.js` module itself and
// nothing of tsx is loaded. Run from the TypeScript sources (tests, `node --import tsx`),
// the thread starts in ts-entry.mjs, which loads the `.ts` worker named by
// `workerData.entry` through tsx: Node 20 does not apply the parent's `--import tsx`
// hooks inside worker threads. Which of the two is told by the caller's own module URL.
//
// Piscina:
//   const { filename, workerData } = workerEntry('./worker.ts', import.meta.url, { models });
//   new Piscina({ filename, workerData, ... });
// worker_threads:
//   const { filename, workerData } = workerEntry('./worker.ts', import.meta.url, { port });
//   new Worker(filename, { workerData, transferList: [port] });
// The worker reads its data from `workerData` of 'piscina' or 'node:worker_threads' as
// usual; under tsx it also finds `entry` there, a name the caller's data must not use.
//
// WORKERS_FROM_DIST=1 (e.g. `npm run build && WORKERS_FROM_DIST=1 npx tap test/x.test.ts`): run
// from the sources, a worker of src/ still starts from its compiled .js in dist/. A data-plane
// thread then starts in half the CPU (1.4 s for two instead of 2.8 s: tsx's hooks
// resolve every import through a thread of their own), and the threads run the code
// `npm start` runs. Only for a dist/ built from the same sources: nothing checks that.
// `npm test` has no need of it: it runs the tests compiled (.test-build/), where every
// caller is a .js module and its threads start from their compiled siblings.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface WorkerEntry<D extends object> {
  /** The module the thread starts with: an absolute path, for Piscina's `filename` or `new Worker(filename)`. */
  readonly filename: string;
  /** The caller's data (a shallow copy), plus `entry`, the worker's `.ts` URL, when it runs through ts-entry.mjs. */
  readonly workerData: D & { readonly entry?: string };
}

const TS_ENTRY = fileURLToPath(new URL('./ts-entry.mjs', import.meta.url));

/**
 * The start of a worker thread whose module is `specifier` (relative, ending in `.ts`,
 * as in an import) resolved against `base` (the caller's `import.meta.url`).
 */
export function workerEntry<D extends object = Record<never, never>>(specifier: string, base: string, workerData?: D): WorkerEntry<D> {
  if (!/^\.\.?\//.test(specifier) || !specifier.endsWith('.ts')) {
    throw new TypeError(`worker module must be a relative .ts specifier, got "${specifier}"`);
  }
  if (workerData !== undefined && 'entry' in workerData) {
    throw new TypeError('workerData.entry is reserved for the worker entry');
  }
  const { pathname } = new URL(base);
  if (pathname.endsWith('.ts') && process.env.WORKERS_FROM_DIST === '1') {
    const compiled = distTwin(new URL(specifier.slice(0, -'.ts'.length) + '.js', base));
    if (compiled !== undefined) return { filename: compiled, workerData: { ...(workerData as D) } };
  }
  if (pathname.endsWith('.ts')) {
    const entry = new URL(specifier, base).href;
    return { filename: TS_ENTRY, workerData: { ...(workerData as D), entry } };
  }
  if (pathname.endsWith('.js')) {
    const compiled = new URL(specifier.slice(0, -'.ts'.length) + '.js', base);
    return { filename: fileURLToPath(compiled), workerData: { ...(workerData as D) } };
  }
  throw new TypeError(`base must be the URL of a .ts or .js module, got "${base}"`);
}

/** A module of src/ as compiled in dist/ (tsconfig.build.json: rootDir src, outDir dist), when it exists. */
function distTwin(url: URL): string | undefined {
  const path = fileURLToPath(url);
  const at = path.lastIndexOf('/src/');
  if (at === -1) return undefined;
  const compiled = `${path.slice(0, at)}/dist/${path.slice(at + '/src/'.length)}`;
  return existsSync(compiled) ? compiled : undefined;
}
