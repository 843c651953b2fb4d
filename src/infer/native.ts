// The native stage (issue 11 §4): native/'s Node-API addon does toTensor()'s per-pixel
// conversion 8x faster than the JavaScript table loop (0.06 against 0.46 ms for a
// 224x224x3 image, docs/benchmarks.md "native/"). It is optional: `npm ci` builds it when
// a C++ toolchain is there (scripts/build-native.mjs), and without it, or with
// INFER_NATIVE=off, the JavaScript path runs and gives the same floats bit for bit
// (the tables come from JavaScript either way; test/infer/native.test.ts).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  /** raw (`got` bytes a pixel) -> out, through `tables` (channels x 256 floats); throws on sizes that do not fit. */
  toTensor(raw: Uint8Array, got: number, plane: number, nhwc: boolean, tables: Float32Array, out: Float32Array): void;
}

export type ConversionMode = 'auto' | 'off';

/** Where the addon is, from src/infer/ (tsx) as from dist/infer/ (compiled). */
export const ADDON_PATH = new URL('../../native/build/Release/edge_native.node', import.meta.url);

export type Loaded = { ok: true; addon: NativeAddon } | { ok: false; reason: string };

/** Loads an addon file; any failure (not built, wrong ABI, missing export) is a reason, not an exception. */
export function loadAddon(path: URL | string = ADDON_PATH): Loaded {
  try {
    const mod = createRequire(import.meta.url)(typeof path === 'string' ? path : fileURLToPath(path)) as Partial<NativeAddon>;
    if (typeof mod.toTensor !== 'function') return { ok: false, reason: 'the addon has no toTensor' };
    return { ok: true, addon: mod as NativeAddon };
  } catch (err) {
    return { ok: false, reason: (err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND' ? 'native/ is not built (npm ci builds it when g++, make and python3 are installed)' : (err as Error).message.split('\n')[0]! };
  }
}

let mode: ConversionMode = 'auto';
let loaded: Loaded | undefined;

/** INFER_NATIVE: 'auto' uses the addon when it loads, 'off' never does. Per thread. */
export function setConversionMode(m: ConversionMode): void {
  mode = m;
}

/** The addon at ADDON_PATH, loaded once per thread. */
function addon(): Loaded {
  return (loaded ??= loadAddon());
}

/** The addon this thread converts with, or undefined for the JavaScript path. */
export function conversionAddon(): NativeAddon | undefined {
  if (mode === 'off') return undefined;
  const a = addon();
  return a.ok ? a.addon : undefined;
}

/** For the start-up log: which path a thread in mode `m` converts pixels with, and why. */
export function describeConversion(m: ConversionMode = mode): { path: 'native' | 'js'; reason: string } {
  if (m === 'off') return { path: 'js', reason: 'INFER_NATIVE=off' };
  const loaded = addon();
  return loaded.ok ? { path: 'native', reason: 'native/build/Release/edge_native.node' } : { path: 'js', reason: loaded.reason };
}
