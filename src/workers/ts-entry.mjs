// The start of a worker thread run from the TypeScript sources (see entry.ts, which
// chooses it): loads the TypeScript module named in workerData.entry through tsx, since
// Node 20 does not apply the parent's `--import tsx` loader hooks inside worker threads.
// Piscina passes its workerData on to the thread, so node:worker_threads serves both a
// Piscina pool (which calls the default export) and a plain Worker. The compiled broker
// (dist/) never loads this file.
import { workerData } from 'node:worker_threads';
import { tsImport } from 'tsx/esm/api';

const mod = await tsImport(workerData.entry, import.meta.url);
export default mod.default;
