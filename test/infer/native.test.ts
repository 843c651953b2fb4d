// Issue 11 §4: native/'s addon converts pixels exactly as the JavaScript path does (the
// same floats, bit for bit, for every layout, channel count and pixel stride), refuses
// sizes that do not fit instead of writing past an array, and the broker runs on either
// path with the same answers; INFER_NATIVE=off and a missing addon leave the JavaScript path.
// `npm ci` builds the addon when g++, make and python3 are installed (.ci/run installs
// them); EDGE_NATIVE_BUILD=skip npm ci && EDGE_NATIVE_BUILD=skip npm test checks the
// broker without it instead.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import * as ort from 'onnxruntime-node';
import { conversionAddon, describeConversion, loadAddon, setConversionMode } from '../../src/infer/native.ts';
import { preprocess, toTensor, toTensorJs } from '../../src/infer/preprocess.ts';
import type { ModelManifest } from '../../src/infer/manifest.ts';
import { startTestBroker, postJson } from '../helpers/broker.ts';
import { FOREIGN, writeForeignModel } from './foreign-model.ts';
import { mulberry32 } from '../../scripts/train/prng.ts';
import { loadConfig } from '../../src/config/env.ts';

const withoutAddon = process.env.EDGE_NATIVE_BUILD === 'skip';

function manifestOf(channels: 1 | 3, layout: 'NCHW' | 'NHWC', mean: number[], std: number[]): ModelManifest {
  return { input: { channels, layout, mean, std } } as unknown as ModelManifest;
}

/** Bitwise: the two float arrays hold the same 32-bit patterns. */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

t.test('the addon is built and loads, or the build was skipped on purpose', async (t) => {
  const d = describeConversion('auto');
  if (withoutAddon) {
    t.equal(d.path, 'js', 'EDGE_NATIVE_BUILD=skip: the JavaScript path');
    return;
  }
  t.equal(d.path, 'native', `npm ci should have built native/ (${d.reason}); without a C++ toolchain run with EDGE_NATIVE_BUILD=skip`);
  t.ok(conversionAddon(), 'the auto mode converts with the addon');
  t.same(describeConversion('off'), { path: 'js', reason: 'INFER_NATIVE=off' });
});

t.test('INFER_NATIVE takes auto or off', async (t) => {
  t.equal(loadConfig({}).inferNative, 'auto');
  t.equal(loadConfig({ INFER_NATIVE: 'off' }).inferNative, 'off');
  t.throws(() => loadConfig({ INFER_NATIVE: 'on' }), /INFER_NATIVE/);
});

t.test('a missing or foreign addon file is a reason, not a crash', async (t) => {
  const missing = loadAddon('/nonexistent/edge_native.node');
  t.equal(missing.ok, false);
  t.match(!missing.ok && missing.reason, /not built/);
  // A file named like an addon that is not one (a failed or foreign build).
  const dir = mkdtempSync(join(tmpdir(), 'eb-native-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bogusPath = join(dir, 'edge_native.node');
  writeFileSync(bogusPath, 'not a shared object');
  const bogus = loadAddon(bogusPath);
  t.equal(bogus.ok, false);
  t.ok(!bogus.ok && bogus.reason.length > 0, `reason: ${!bogus.ok && bogus.reason}`);
});

t.test('native and JavaScript give the same floats, bit for bit', { skip: withoutAddon && 'EDGE_NATIVE_BUILD=skip' }, async (t) => {
  const rng = mulberry32(11);
  let cases = 0;
  for (const channels of [1, 3] as const) {
    for (const layout of ['NCHW', 'NHWC'] as const) {
      for (let got = channels; got <= 4; got++) {
        for (const [w, h] of [[1, 1], [28, 28], [31, 7], [224, 224]] as const) {
          const mean = Array.from({ length: channels }, () => rng());
          const std = Array.from({ length: channels }, () => 0.05 + rng());
          const m = manifestOf(channels, layout, mean, std);
          const plane = w * h;
          const raw = new Uint8Array(plane * got);
          for (let i = 0; i < raw.length; i++) raw[i] = Math.floor(rng() * 256);
          // Into a slot in the middle of a batch, as the worker does: the neighbours stay untouched.
          const per = channels * plane;
          const js = new Float32Array(3 * per).fill(-7);
          const nat = new Float32Array(3 * per).fill(-7);
          setConversionMode('off');
          toTensor(raw, got, m, plane, js.subarray(per, 2 * per));
          setConversionMode('auto');
          toTensor(raw, got, m, plane, nat.subarray(per, 2 * per));
          if (!sameBits(js, nat)) t.fail(`${channels}ch ${layout} got ${got} ${w}x${h}: outputs differ`);
          if (nat[per - 1] !== -7 || nat[2 * per] !== -7) t.fail('wrote outside its slot');
          cases++;
        }
      }
    }
  }
  // 1 channel: 1 to 4 bytes a pixel; 3 channels: 3 or 4. Two layouts, four sizes.
  t.equal(cases, (4 + 2) * 2 * 4, 'every combination compared');
  t.pass('all identical');
});

t.test('the addon refuses what does not fit, and writes nothing out of bounds', { skip: withoutAddon && 'EDGE_NATIVE_BUILD=skip' }, async (t) => {
  const addon = conversionAddon()!;
  const tables = new Float32Array(3 * 256);
  const raw = new Uint8Array(10 * 3);
  const out = new Float32Array(30);
  t.throws(() => addon.toTensor(raw, 3, 11, false, tables, out), RangeError, 'raw shorter than plane x got');
  t.throws(() => addon.toTensor(raw, 3, 10, false, tables, new Float32Array(29)), RangeError, 'out shorter than channels x plane');
  t.throws(() => addon.toTensor(raw, 2, 10, false, tables, out), RangeError, 'fewer bytes a pixel than channels');
  t.throws(() => addon.toTensor(raw, 3, 10, false, new Float32Array(2 * 256), out), RangeError, 'two channels');
  t.throws(() => addon.toTensor(raw, 3, -1, false, tables, out), RangeError, 'negative plane');
  t.throws(() => addon.toTensor(new Float32Array(30) as unknown as Uint8Array, 3, 10, false, tables, out), TypeError, 'raw of another type');
  t.throws(() => (addon.toTensor as unknown as (...a: unknown[]) => void)(raw, 3, 10), TypeError, 'missing arguments');
  // Through subarrays: the addon sees each view's own bounds, not its buffer's.
  const backing = new Float32Array(60).fill(5);
  t.throws(() => addon.toTensor(raw, 3, 10, false, tables, backing.subarray(0, 29)), RangeError);
  addon.toTensor(raw, 3, 10, false, tables, backing.subarray(10, 40));
  t.equal(backing[9], 5);
  t.equal(backing[40], 5);
  t.equal(backing[10], 0, 'wrote its slot');
});

t.test('preprocess of real images: the same tensor on both paths', async (t) => {
  const m = manifestOf(3, 'NCHW', [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
  (m.input as { defaultSize?: number }).defaultSize = 64;
  const rng = mulberry32(5);
  const px = Buffer.alloc(90 * 70 * 3);
  for (let i = 0; i < px.length; i++) px[i] = Math.floor(rng() * 256);
  for (const fmt of ['jpeg', 'png', 'webp'] as const) {
    const img = await sharp(px, { raw: { width: 90, height: 70, channels: 3 } })[fmt]().toBuffer();
    setConversionMode('off');
    const js = await preprocess(img, m, undefined, 1e8);
    setConversionMode('auto');
    const nat = await preprocess(img, m, undefined, 1e8);
    t.ok(js.ok && nat.ok && sameBits(js.tensor, nat.tensor), `${fmt}: identical`);
  }
  // toTensorJs is the JavaScript path whatever the mode.
  const raw = new Uint8Array(12).map((_, i) => i * 20);
  const a = new Float32Array(12);
  const b = new Float32Array(12);
  toTensorJs(raw, 3, m, 4, a);
  setConversionMode('off');
  toTensor(raw, 3, m, 4, b);
  setConversionMode('auto');
  t.ok(sameBits(a, b));
});

t.test('a broker on each path answers the same, request after request', async (t) => {
  const modelPath = writeForeignModel();
  const env = { MODEL_VA_PATH: modelPath, MODEL_VB_PATH: modelPath, AB_WEIGHT_A: '1', AB_WEIGHT_B: '0' };
  // Started side by side; the JavaScript one serves HTTP on its main thread (what differs is in the workers).
  const [native, js] = await Promise.all([startTestBroker(env), startTestBroker({ ...env, INFER_NATIVE: 'off', FRONT_THREADS: '0' })]);
  t.teardown(() => Promise.all([native.close(), js.close()]));
  const started = (tb: typeof native) => tb.logs.find((l) => l.msg === 'edge broker listening')!;
  t.equal(started(js).pixel_conversion, 'js');
  t.equal(started(js).pixel_conversion_reason, 'INFER_NATIVE=off');
  t.equal(started(native).pixel_conversion, withoutAddon ? 'js' : 'native', 'the start-up log names the path');

  // Images of other sizes one after the other, a broken one among them: each worker reuses
  // its input tensors, so a request must not see the previous one's pixels.
  const rng = mulberry32(9);
  // A JPEG's signature and garbage: it reaches a worker and fails in its decode, inside a batch.
  const broken = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(300, 0x5a)]);
  const images: Buffer[] = [];
  for (let i = 0; i < 8; i++) {
    const w = 20 + 9 * i;
    const h = 50 - 3 * i;
    const px = Buffer.alloc(w * h * 3);
    for (let p = 0; p < px.length; p++) px[p] = Math.floor(rng() * 256);
    images.push(await sharp(px, { raw: { width: w, height: h, channels: 3 } })[i % 2 ? 'jpeg' : 'png']().toBuffer());
    if (i === 3) images.push(broken);
  }
  // The reference for each image: sharp, normalised by hand, one onnxruntime run (as test/infer/foreign.test.ts).
  const session = await ort.InferenceSession.create(modelPath);
  t.teardown(() => session.release());
  const direct = async (img: Buffer): Promise<number[]> => {
    const raw = await sharp(img).resize(FOREIGN.size, FOREIGN.size, { fit: 'cover' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
    const x = new Float32Array(raw.length);
    for (let i = 0; i < x.length; i++) x[i] = (raw[i]! / 255 - FOREIGN.mean[i % 3]!) / FOREIGN.std[i % 3]!;
    const logits = Array.from((await session.run({ input: new ort.Tensor('float32', x, [1, FOREIGN.size, FOREIGN.size, 3]) })).scores!.data as Float32Array);
    const e = logits.map((v) => Math.exp(v - Math.max(...logits)));
    return e.map((v) => v / e.reduce((s, y) => s + y, 0));
  };
  const ask = (tb: typeof native, img: Buffer) => postJson(`${tb.url}/v1/infer`, { image_b64: img.toString('base64'), top_k: FOREIGN.classes });
  for (const round of ['one by one', 'concurrently'] as const) {
    const a = round === 'one by one' ? [] : await Promise.all(images.map((img) => ask(native, img)));
    const b = round === 'one by one' ? [] : await Promise.all(images.map((img) => ask(js, img)));
    if (round === 'one by one') for (const img of images) a.push(await ask(native, img)), b.push(await ask(js, img));
    for (const [i, img] of images.entries()) {
      if (img === broken) {
        t.equal(a[i]!.body.error?.code, 'unsupported_image', `${round}: the broken image fails alone`);
        t.equal(b[i]!.body.error?.code, 'unsupported_image');
        continue;
      }
      t.equal(a[i]!.status, 200);
      t.same(a[i]!.body.predictions, b[i]!.body.predictions, `${round}, image ${i}: the same scores on both paths`);
      const want = await direct(img);
      const worst = Math.max(...(a[i]!.body.predictions as { index: number; score: number }[]).map((p) => Math.abs(p.score - want[p.index]!)));
      t.ok(worst <= 1e-6, `${round}, image ${i}: equals a direct run of its own pixels (max difference ${worst})`);
    }
  }
});
