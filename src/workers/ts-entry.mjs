// Piscina loads this plain-JS entry, which loads the TypeScript worker named in
// workerData.entry through tsx: Node 20 does not apply the parent's `--import tsx`
// loader hooks inside worker threads.
import { workerData } from 'piscina';
import { tsImport } from 'tsx/esm/api';

const mod = await tsImport(workerData.entry, import.meta.url);
export default mod.default;
