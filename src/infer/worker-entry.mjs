// Piscina loads this plain-JS entry: Node 20 does not apply the parent's `--import tsx`
// loader hooks inside worker threads, so the TypeScript worker is loaded through tsx here.
import { tsImport } from 'tsx/esm/api';

const mod = await tsImport('./worker.ts', import.meta.url);
export default mod.default;
