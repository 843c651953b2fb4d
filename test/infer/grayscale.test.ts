// A 1-channel model gets the gray PIL's convert('L') gives (and so torchvision's Grayscale
// of a PIL image): BT.601 luma of the gamma-encoded sRGB bytes, Convert.c's L24, not
// sharp's grayscale() (luminance in linear light: red 127 where PIL gives 76).
import t from 'tap';
import sharp from 'sharp';
import { preprocess } from '../../src/infer/preprocess.ts';
import type { ModelManifest } from '../../src/infer/manifest.ts';
import { mulberry32 } from '../../scripts/train/prng.ts';

const SIZE = 8;

/** 1 channel, mean 0, std 1: the tensor is pixel / 255. */
function manifest(layout: 'NCHW' | 'NHWC' = 'NCHW'): ModelManifest {
  return {
    name: 'm',
    version: '1',
    input: { name: 'x', layout, channels: 1, height: SIZE, width: SIZE, defaultSize: SIZE, mean: [0], std: [1] },
    output: { name: 'y', kind: 'logits' },
    labels: ['a'],
    batching: { maxBatchSize: 1, preferredBatchSizes: [], maxQueueDelayUs: 0 },
  } as unknown as ModelManifest;
}

/** PIL's L24 >> 16, written out here rather than taken from preprocess.ts. */
const pil = (r: number, g: number, b: number) => Math.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536);

/** What the tensor must hold: the formula over the sRGB pixels sharp gives at the model's size (alpha dropped), / 255 as float32. */
async function expected(bytes: Buffer): Promise<Float32Array> {
  const { data, info } = await sharp(bytes).resize(SIZE, SIZE, { fit: 'cover' }).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`sharp gave ${info.channels} channels`);
  return Float32Array.from({ length: SIZE * SIZE }, (_, i) => pil(data[3 * i]!, data[3 * i + 1]!, data[3 * i + 2]!) / 255);
}

async function tensorOf(bytes: Buffer, m = manifest()): Promise<Float32Array> {
  const got = await preprocess(bytes, m, undefined, 1e8);
  if (!got.ok) throw new Error(got.message);
  return got.tensor;
}

/** Index of the first value that differs (Object.is), or -1. */
function firstDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

const raw3 = (size = SIZE) => ({ raw: { width: size, height: size, channels: 3 as const } });
const solid = (r: number, g: number, b: number, size = SIZE) => {
  const px = Buffer.alloc(size * size * 3);
  for (let i = 0; i < px.length; i += 3) [px[i], px[i + 1], px[i + 2]] = [r, g, b];
  return px;
};

t.test('the formula: R = G = B = v gives v; pure red, green and blue give PIL\'s 76, 150, 29', async (t) => {
  let bad = 0;
  for (let v = 0; v < 256; v++) if (pil(v, v, v) !== v) bad++;
  t.equal(bad, 0, 'gray levels kept');
  t.same([pil(255, 0, 0), pil(0, 255, 0), pil(0, 0, 255)], [76, 150, 29]);
});

t.test('pure red, green, blue and a mixed colour, PNG, JPEG and WebP, at the model size: PIL\'s gray', async (t) => {
  const colours: [string, number, number, number, number][] = [
    ['red', 255, 0, 0, 76],
    ['green', 0, 255, 0, 150],
    ['blue', 0, 0, 255, 29],
    ['mixed (200, 120, 40)', 200, 120, 40, pil(200, 120, 40)],
  ];
  for (const [what, r, g, b, want] of colours) {
    const px = solid(r, g, b);
    for (const [fmt, bytes] of [
      ['png', await sharp(px, raw3()).png().toBuffer()],
      ['jpeg', await sharp(px, raw3()).jpeg({ quality: 100, chromaSubsampling: '4:4:4' }).toBuffer()],
      ['webp', await sharp(px, raw3()).webp({ lossless: true }).toBuffer()],
    ] as const) {
      const tensor = await tensorOf(bytes);
      t.equal(firstDiff(tensor, await expected(bytes)), -1, `${what} ${fmt}: the formula over sharp's sRGB pixels`);
      if (fmt !== 'jpeg') t.equal(tensor[0], Math.fround(want / 255), `${what} ${fmt}: ${want}/255`);
    }
  }
  const red = await tensorOf(await sharp(solid(255, 0, 0), raw3()).png().toBuffer());
  t.ok(red.every((x) => x === Math.fround(76 / 255)), 'every pixel of pure red is 76/255 (sharp\'s grayscale() gave 127)');
});

t.test('random colours, NCHW and NHWC: pixel for pixel', async (t) => {
  const rng = mulberry32(601);
  const px = Buffer.from(Uint8Array.from({ length: SIZE * SIZE * 3 }, () => Math.floor(rng() * 256)));
  const png = await sharp(px, raw3()).png().toBuffer();
  const want = Float32Array.from({ length: SIZE * SIZE }, (_, i) => pil(px[3 * i]!, px[3 * i + 1]!, px[3 * i + 2]!) / 255);
  for (const layout of ['NCHW', 'NHWC'] as const) {
    t.equal(firstDiff(await tensorOf(png, manifest(layout)), want), -1, `${layout}: the formula over the pixels as written`);
  }
});

t.test('a larger image, resized: the formula over sharp\'s resized sRGB pixels', async (t) => {
  const rng = mulberry32(76);
  const big = 37;
  const px = Buffer.from(Uint8Array.from({ length: big * big * 3 }, () => Math.floor(rng() * 256)));
  for (const [fmt, bytes] of [
    ['png', await sharp(px, raw3(big)).png().toBuffer()],
    ['jpeg', await sharp(px, raw3(big)).jpeg().toBuffer()],
  ] as const) {
    t.equal(firstDiff(await tensorOf(bytes), await expected(bytes)), -1, `${big}x${big} ${fmt} to ${SIZE}x${SIZE}`);
  }
  const red = await tensorOf(await sharp(solid(255, 0, 0, big), raw3(big)).png().toBuffer());
  t.ok(red.every((x) => x === Math.fround(76 / 255)), 'a resized pure red is 76/255 throughout');
});

t.test('RGBA: alpha ignored, as convert(\'L\') does', async (t) => {
  const rng = mulberry32(4);
  const px = Buffer.from(Uint8Array.from({ length: SIZE * SIZE * 4 }, () => Math.floor(rng() * 256)));
  px[3] = 0; // one pixel fully transparent
  const png = await sharp(px, { raw: { width: SIZE, height: SIZE, channels: 4 } }).png().toBuffer();
  const tensor = await tensorOf(png);
  t.equal(firstDiff(tensor, await expected(png)), -1, 'the formula over sharp\'s pixels, alpha removed');
  const want = Float32Array.from({ length: SIZE * SIZE }, (_, i) => pil(px[4 * i]!, px[4 * i + 1]!, px[4 * i + 2]!) / 255);
  t.equal(firstDiff(tensor, want), -1, 'and over the RGB as written, whatever the alpha');
});

t.test('a gray JPEG and a gray PNG (one channel): their own gray values', async (t) => {
  const rng = mulberry32(9);
  const gray = Buffer.from(Uint8Array.from({ length: SIZE * SIZE }, () => Math.floor(rng() * 256)));
  const raw1 = { raw: { width: SIZE, height: SIZE, channels: 1 as const } };
  const jpeg = await sharp(gray, raw1).toColourspace('b-w').jpeg({ quality: 90 }).toBuffer();
  const meta = await sharp(jpeg).metadata();
  t.equal(meta.channels, 1, 'the JPEG is one-channel');
  const decoded = await sharp(jpeg).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  t.equal(decoded.info.channels, 1, 'decoded as one channel');
  const wantJpeg = Float32Array.from(decoded.data, (v) => v / 255);
  t.equal(firstDiff(await tensorOf(jpeg), wantJpeg), -1, 'gray JPEG: its decoded gray, unchanged');
  // At another size (so not the PNG path without sharp), a gray PNG keeps its values too.
  const png = await sharp(gray, raw1).toColourspace('b-w').resize(SIZE * 2, SIZE * 2, { kernel: 'nearest' }).png().toBuffer();
  const small = await sharp(png).resize(SIZE, SIZE, { fit: 'cover' }).toColourspace('b-w').raw().toBuffer();
  t.equal(firstDiff(await tensorOf(png), Float32Array.from(small, (v) => v / 255)), -1, 'gray PNG through sharp: sharp\'s gray, unchanged');
});
