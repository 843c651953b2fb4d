// Worker-thread entry for the baseline: Node 20 does not apply the parent's
// `--import tsx` hooks inside worker threads (see src/workers/ts-entry.mjs), so
// the TypeScript worker is loaded through tsx here.
import { tsImport } from 'tsx/esm/api';

await tsImport('./baseline-worker.ts', import.meta.url);
