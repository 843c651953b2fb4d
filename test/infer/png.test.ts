// Issue 11 §3/§4: a PNG at the model's input size decodes without sharp (src/infer/png.ts).
// Its tensor must equal the one sharp's pipeline gives for the same bytes, bit for bit,
// for every filter and colour type it takes; and every case it does not take must reach
// sharp (and so keep sharp's errors).
import t, { type Test } from 'tap';
import sharp from 'sharp';
import { crc32, deflateSync } from 'node:zlib';
import { decodeSimplePng } from '../../src/infer/png.ts';
import { pngTensor, preprocess, toTensor } from '../../src/infer/preprocess.ts';
import type { ModelManifest } from '../../src/infer/manifest.ts';
import { loadSplit } from '../../scripts/train/idx.ts';
import { mulberry32 } from '../../scripts/train/prng.ts';

function manifest(channels: 1 | 3, size: number, layout: 'NCHW' | 'NHWC' = 'NCHW'): ModelManifest {
  return {
    name: 'm',
    version: '1',
    input: { name: 'x', layout, channels, height: size, width: size, defaultSize: size, mean: channels === 1 ? [0.25] : [0.5, 0.4, 0.3], std: channels === 1 ? [0.5] : [0.2, 0.25, 0.3] },
    output: { name: 'y', kind: 'logits' },
    labels: ['a'],
    batching: { maxBatchSize: 1, preferredBatchSizes: [], maxQueueDelayUs: 0 },
  } as unknown as ModelManifest;
}

/**
 * The tensor sharp's pipeline gives (preprocess's sharp branch): sRGB, and for a gray
 * model PIL's BT.601 luma of it (test/infer/grayscale.test.ts), written out here.
 */
async function viaSharp(bytes: Uint8Array, m: ModelManifest, size: number): Promise<Float32Array> {
  const raw = await sharp(bytes, { failOn: 'error' }).resize(size, size, { fit: 'cover' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
  const plane = size * size;
  const got = raw.length / plane;
  const px = m.input.channels === 1 ? Uint8Array.from({ length: plane }, (_, i) => Math.floor((raw[i * got]! * 19595 + raw[i * got + 1]! * 38470 + raw[i * got + 2]! * 7471 + 32768) / 65536)) : raw;
  const out = new Float32Array(m.input.channels * plane);
  toTensor(px, m.input.channels === 1 ? 1 : got, m, plane, out);
  return out;
}

function same(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

/** Whether the PNG takes the path without sharp for this model. */
const fastPath = (png: Uint8Array, m: ModelManifest, size: number) => pngTensor(png, m, size, size, new Float32Array(m.input.channels * size * size));

async function check(t: Test, png: Buffer, m: ModelManifest, size: number, fast: boolean, what: string): Promise<void> {
  t.equal(fastPath(png, m, size), fast, `${what}: ${fast ? 'decoded without sharp' : 'left to sharp'}`);
  const got = await preprocess(png, m, undefined, 1e8);
  if (!got.ok) return void t.fail(`${what}: ${got.message}`);
  t.ok(same(got.tensor, await viaSharp(png, m, size)), `${what}: the tensor equals sharp's`);
}

t.test('Fashion-MNIST test items as PNG, gray and as RGB (what sharp writes by default): every row filter, the same tensor as sharp', async (t) => {
  const n = 300;
  const split = loadSplit('t10k', n);
  const m = manifest(1, 28);
  let diff = 0;
  let fast = 0;
  let wrongType = 0;
  for (let i = 0; i < n; i++) {
    const pixels = Buffer.from(split.images.subarray(i * 784, (i + 1) * 784));
    // Alternate the encoder's settings so that all five row filters occur; half the
    // files are colour type 0 (gray), half type 2 with R = G = B, as sharp writes a
    // one-channel raw image.
    let p = sharp(pixels, { raw: { width: 28, height: 28, channels: 1 } });
    if (i % 4 < 2) p = p.toColourspace('b-w');
    const png = await p.png({ adaptiveFiltering: i % 2 === 0, compressionLevel: i % 10 }).toBuffer();
    if (png[25] !== (i % 4 < 2 ? 0 : 2)) wrongType++;
    if (fastPath(png, m, 28)) fast++;
    const got = await preprocess(png, m, undefined, 1e8);
    if (!got.ok || !same(got.tensor, await viaSharp(png, m, 28))) diff++;
  }
  t.equal(wrongType, 0, 'half the files are colour type 0, half type 2');
  t.equal(fast, n, `all ${n} decoded without sharp`);
  t.equal(diff, 0, 'tensors identical to those of sharp');
});

t.test('colour types: gray, gray+alpha, RGB, RGBA; NCHW and NHWC', async (t) => {
  const rng = mulberry32(11);
  const size = 32;
  const img = (channels: number) => Buffer.from(Uint8Array.from({ length: size * size * channels }, () => Math.floor(rng() * 256)));
  const enc = (channels: 1 | 2 | 3 | 4, adaptive: boolean) => {
    const p = sharp(img(channels), { raw: { width: size, height: size, channels } });
    return (channels <= 2 ? p.toColourspace('b-w') : p).png({ adaptiveFiltering: adaptive }).toBuffer();
  };
  /** RGB(A) whose pixels are gray: the luma keeps them as they are. */
  const grayRgb = (channels: 3 | 4) => {
    const px = img(channels);
    for (let i = 0; i < px.length; i += channels) px[i + 1] = px[i + 2] = px[i]!;
    return sharp(px, { raw: { width: size, height: size, channels } }).png().toBuffer();
  };
  for (const adaptive of [true, false]) {
    await check(t, await enc(1, adaptive), manifest(1, size), size, true, `gray (adaptive ${adaptive})`);
    await check(t, await enc(2, adaptive), manifest(1, size), size, true, `gray+alpha to a gray model (adaptive ${adaptive})`);
    await check(t, await enc(3, adaptive), manifest(3, size), size, true, `RGB (adaptive ${adaptive})`);
    await check(t, await enc(4, adaptive), manifest(3, size, 'NHWC'), size, true, `RGBA to an NHWC RGB model (adaptive ${adaptive})`);
    // A colour conversion is sharp's: RGB to gray, gray to RGB.
    await check(t, await enc(3, adaptive), manifest(1, size), size, false, `RGB to a gray model (adaptive ${adaptive})`);
    await check(t, await enc(1, adaptive), manifest(3, size), size, false, `gray to an RGB model (adaptive ${adaptive})`);
  }
  await check(t, await grayRgb(3), manifest(1, size), size, true, 'RGB with R = G = B to a gray model');
  await check(t, await grayRgb(4), manifest(1, size), size, true, 'RGBA with R = G = B to a gray model');
  // One pixel off gray: the luma, not the red channel.
  const almost = await grayRgb(3).then((png) => sharp(png).raw().toBuffer());
  almost[5 * 3 + 1] = (almost[5 * 3 + 1]! + 1) & 0xff;
  await check(t, await sharp(almost, { raw: { width: size, height: size, channels: 3 } }).png().toBuffer(), manifest(1, size), size, false, 'RGB with one pixel not gray');
});

t.test('what sharp keeps: another size, interlaced, palette, 16-bit, transparency, ICC', async (t) => {
  const rng = mulberry32(5);
  const rgb = Buffer.from(Uint8Array.from({ length: 32 * 32 * 3 }, () => Math.floor(rng() * 256)));
  const raw = { raw: { width: 32, height: 32, channels: 3 as const } };
  const m = manifest(3, 32);
  await check(t, await sharp(rgb, { raw: { width: 32, height: 32, channels: 3 } }).resize(40, 40).png().toBuffer(), m, 32, false, 'a 40x40 image for a 32x32 model');
  await check(t, await sharp(rgb, raw).png({ progressive: true }).toBuffer(), m, 32, false, 'interlaced');
  await check(t, await sharp(rgb, raw).png({ palette: true }).toBuffer(), m, 32, false, 'palette');
  await check(t, await sharp(rgb, raw).toColourspace('rgb16').png().toBuffer(), m, 32, false, '16-bit');
  await check(t, await sharp(rgb, raw).withIccProfile('p3').png().toBuffer(), m, 32, false, 'with an ICC profile');
  await check(t, withChunk(await sharp(rgb, raw).png().toBuffer(), 'tRNS', Buffer.from([0, 1, 0, 2, 0, 3])), m, 32, false, 'tRNS');
});

t.test('damaged files go to sharp, which refuses them as before', async (t) => {
  const split = loadSplit('t10k', 1);
  const png = await sharp(Buffer.from(split.images.subarray(0, 784)), { raw: { width: 28, height: 28, channels: 1 } }).png().toBuffer();
  const m = manifest(1, 28);
  const idat = png.indexOf('IDAT');
  const badCrc = Buffer.from(png);
  badCrc[idat + 6]! ^= 0xff;
  t.equal(decodeSimplePng(badCrc, 28, 28), undefined, 'a flipped byte in IDAT fails its CRC here');
  const cut = png.subarray(0, png.length - 20);
  t.equal(decodeSimplePng(cut, 28, 28), undefined, 'a truncated file');
  for (const [what, bytes] of [['bad CRC', badCrc], ['truncated', cut]] as const) {
    const got = await preprocess(bytes, m, undefined, 1e8);
    t.equal(got.ok ? 'ok' : got.code, 'unsupported_image', `${what}: sharp's verdict, unsupported_image`);
  }
  // A stream that inflates to more rows than the header says is cut at the bound.
  const rows = Buffer.alloc(29 * 56);
  const long = pngOf(28, 28, 0, deflateSync(rows));
  t.equal(decodeSimplePng(long, 28, 28), undefined, 'an IDAT longer than its header says');
  const short = pngOf(28, 28, 0, deflateSync(Buffer.alloc(29 * 10)));
  t.equal(decodeSimplePng(short, 28, 28), undefined, 'an IDAT shorter than its header says');
  const filter = Buffer.alloc(29 * 28);
  filter[29 * 3] = 9;
  t.equal(decodeSimplePng(pngOf(28, 28, 0, deflateSync(filter)), 28, 28), undefined, 'an unknown row filter');
  const ok = pngOf(28, 28, 0, deflateSync(Buffer.alloc(29 * 28)));
  t.ok(decodeSimplePng(ok, 28, 28), 'the same file built right decodes (the builder is sound)');
  // Chunk order and names libpng refuses: refused here too, so sharp says so.
  const z = deflateSync(Buffer.alloc(29 * 28));
  const ihdr = ok.subarray(8, 33);
  const iend = chunk('IEND', Buffer.alloc(0));
  const sig = ok.subarray(0, 8);
  const odd: [string, Buffer][] = [
    ['a second IHDR', Buffer.concat([sig, ihdr, ihdr, chunk('IDAT', z), iend])],
    ['IDAT chunks with another chunk between them', Buffer.concat([sig, ihdr, chunk('IDAT', z.subarray(0, 5)), chunk('tEXt', Buffer.from('a\0b')), chunk('IDAT', z.subarray(5)), iend])],
    ['a chunk type that is not letters', Buffer.concat([sig, ihdr, chunk('a1b2', Buffer.alloc(2)), chunk('IDAT', z), iend])],
  ];
  for (const [what, bytes] of odd) {
    t.equal(decodeSimplePng(bytes, 28, 28), undefined, `${what}: left to sharp`);
    const got = await preprocess(bytes, m, undefined, 1e8);
    t.equal(got.ok ? 'ok' : got.code, 'unsupported_image', `${what}: sharp refuses it`);
  }
  const consecutive = Buffer.concat([sig, ihdr, chunk('IDAT', z.subarray(0, 5)), chunk('IDAT', z.subarray(5)), chunk('tEXt', Buffer.from('a\0b')), iend]);
  t.ok(decodeSimplePng(consecutive, 28, 28), 'consecutive IDAT chunks, then a text chunk: decoded here');
});

t.test('property: on any PNG-like input, preprocess answers as sharp alone does (same tensor, or the same error code)', async (t) => {
  const rng = mulberry32(23);
  const int = (n: number) => Math.floor(rng() * n);
  const m = manifest(1, 16);
  const m3 = manifest(3, 16);
  /** preprocess's answer without the path that skips sharp: sharp's pipeline, or its error code. */
  const sharpAnswer = async (bytes: Buffer, mm: ModelManifest): Promise<Float32Array | string> => {
    try {
      return await viaSharp(bytes, mm, 16);
    } catch {
      return 'unsupported_image';
    }
  };
  let fast = 0;
  let mismatches = 0;
  const cases = 400;
  for (let i = 0; i < cases; i++) {
    // Rows with random filter types (now and then one PNG does not define) over random
    // pixels, deflated, with valid CRCs: the decoder's arithmetic is what is tested, not
    // only its checks. Then, for a third of the cases, one random byte flipped after the
    // signature, its chunk's CRC recomputed or not.
    const colour = [0, 2, 4, 6][int(4)]!;
    const channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[colour]!;
    const rows = Buffer.alloc((16 * channels + 1) * 16);
    for (let y = 0; y < 16; y++) {
      rows[y * (16 * channels + 1)] = rng() < 0.02 ? 5 + int(250) : int(5);
      for (let x = 1; x <= 16 * channels; x++) rows[y * (16 * channels + 1) + x] = int(256);
    }
    let png = pngOf(16, 16, colour, deflateSync(rows, { level: int(10) }));
    if (i % 3 === 0) {
      png = Buffer.from(png);
      const at = 8 + int(png.length - 8);
      png[at]! ^= 1 + int(255);
      if (rng() < 0.5) png = recrc(png);
    }
    const mm = colour === 0 || colour === 4 ? m : m3;
    if (fastPath(png, mm, 16)) fast++;
    const got = await preprocess(png, mm, undefined, 1e8);
    const want = await sharpAnswer(png, mm);
    const same_ = got.ok ? want instanceof Float32Array && same(got.tensor, want) : got.code === want;
    if (!same_) {
      mismatches++;
      if (mismatches <= 3) t.fail(`case ${i}: colour ${colour}, ${got.ok ? 'decoded' : got.code} here, ${typeof want === 'string' ? want : 'decoded'} by sharp`);
    }
  }
  t.equal(mismatches, 0, `${cases} inputs, the same answer as sharp's`);
  t.ok(fast > cases / 3, `a good share took the path without sharp (${fast})`);
});

/** Every chunk's CRC made right again (after a flipped byte). */
function recrc(png: Buffer): Buffer {
  const out = Buffer.from(png);
  for (let at = 8; at + 12 <= out.length; ) {
    const len = out.readUInt32BE(at);
    if (at + 12 + len > out.length) break;
    out.writeUInt32BE(crc32(out.subarray(at + 4, at + 8 + len)), at + 8 + len);
    at += 12 + len;
  }
  return out;
}

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

function pngOf(width: number, height: number, colour: number, idat: Buffer): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = colour;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', idat), chunk('IEND', Buffer.alloc(0))]);
}

/** `png` with one more chunk right after IHDR. */
function withChunk(png: Buffer, type: string, data: Buffer): Buffer {
  return Buffer.concat([png.subarray(0, 33), chunk(type, data), png.subarray(33)]);
}
