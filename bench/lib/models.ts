// The models the benches run: the trained Fashion-MNIST model (which may still be in
// training when a bench starts) and the heavy load model (generated on demand).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { loadManifest, type LoadedModel } from '../../src/infer/manifest.ts';
import { ROOT } from './process.ts';
import { sleep } from './stats.ts';

export const VA_PATH = join(ROOT, 'models', 'vA.onnx');
export const VB_PATH = join(ROOT, 'models', 'vB.onnx');
export const HEAVY_PATH = join(ROOT, 'models', 'load', 'heavy.onnx');
export const WIDE_PATH = join(ROOT, 'models', 'load', 'wide.onnx');

/**
 * Waits until `modelPath` and its manifest exist and have stopped changing (a
 * trainer may still be writing them), then loads the manifest.
 */
export async function waitForModel(modelPath: string, timeoutMs = 20 * 60_000, log: (msg: string) => void = console.log): Promise<LoadedModel> {
  const manifestPath = modelPath.replace(/\.onnx$/i, '.json');
  const deadline = Date.now() + timeoutMs;
  let announced = false;
  let last = '';
  for (;;) {
    if (existsSync(modelPath) && existsSync(manifestPath)) {
      const sig = [modelPath, manifestPath].map((p) => `${statSync(p).size}:${statSync(p).mtimeMs}`).join('|');
      // Two identical looks 2 s apart: the writer is done.
      if (sig === last) return loadManifest(modelPath);
      last = sig;
    } else if (!announced) {
      log(`waiting for ${modelPath} (+ manifest), up to ${Math.round(timeoutMs / 60_000)} min: is it still being trained?`);
      announced = true;
    }
    if (Date.now() > deadline) throw new Error(`${modelPath} did not appear within ${timeoutMs / 60_000} min`);
    await sleep(2000);
  }
}

/** models/load/ (heavy.onnx, wide.onnx) is gitignored: make it with `npm run make-load-model` when a file is missing. */
export function ensureLoadModel(log: (msg: string) => void = console.log, path: string = HEAVY_PATH): LoadedModel {
  if ([HEAVY_PATH, WIDE_PATH].some((p) => !existsSync(p) || !existsSync(p.replace(/\.onnx$/, '.json')))) {
    const scripts = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts?: Record<string, string> }).scripts ?? {};
    const [cmd, args] =
      scripts['make-load-model'] !== undefined
        ? ['npm', ['run', '--silent', 'make-load-model']]
        : [process.execPath, ['--import', 'tsx', 'scripts/make-load-model.ts']];
    log(`${path} is missing: running ${cmd === 'npm' ? 'npm run make-load-model' : 'scripts/make-load-model.ts'}`);
    const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`make-load-model failed (${r.status ?? r.signal})`);
  }
  return loadManifest(path);
}
