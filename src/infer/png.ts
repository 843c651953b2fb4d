// A PNG that is already the model's input size needs no resize, and a plain 8-bit
// one decodes in JavaScript (node:zlib inflates) far faster than a libvips pipeline:
// sharp's fixed cost per image, not its per-pixel work, is most of a small image's
// CPU (28x28 gray: ~0.8 ms against ~0.02 ms here; docs/benchmarks.md, "Session 8: a PNG
// at the model's size skips sharp"; preprocess.ts takes this path up to 256x256).
// Anything outside the simple case returns undefined and goes to
// sharp, which then decides (and words any error) exactly as before: interlaced,
// palette, 16-bit, transparency chunks, an ICC profile, a bad CRC, a short or long
// stream. test/infer/png.test.ts checks the pixels against sharp's.
import { crc32, inflateSync } from 'node:zlib';

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
/** Colour types decoded here, and their bytes per pixel at depth 8. */
const CHANNELS: Readonly<Record<number, number>> = { 0: 1, 2: 3, 4: 2, 6: 4 };
const te = new TextDecoder('latin1');

/** The IHDR of a PNG: width, height, bit depth, colour type and interlace method; undefined when not a PNG. */
export function pngHeader(b: Uint8Array): { width: number; height: number; depth: number; colour: number; interlace: number } | undefined {
  if (b.length < 33) return undefined;
  for (let i = 0; i < 8; i++) if (b[i] !== SIGNATURE[i]) return undefined;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint32(8) !== 13 || te.decode(b.subarray(12, 16)) !== 'IHDR') return undefined;
  return { width: v.getUint32(16), height: v.getUint32(20), depth: b[24]!, colour: b[25]!, interlace: b[28]! };
}

/**
 * The pixels of a simple PNG that is exactly `width` x `height`, interleaved, with the
 * bytes per pixel of its colour type (gray 1, gray+alpha 2, RGB 3, RGBA 4), as sharp's
 * raw output of the same file; or undefined when sharp must take it.
 */
export function decodeSimplePng(b: Uint8Array, width: number, height: number): { pixels: Uint8Array; channels: number } | undefined {
  const h = pngHeader(b);
  if (h === undefined || h.width !== width || h.height !== height || h.depth !== 8 || h.interlace !== 0) return undefined;
  const channels = CHANNELS[h.colour];
  if (channels === undefined || b[26] !== 0 || b[27] !== 0) return undefined;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const idat: Uint8Array[] = [];
  let idatBytes = 0;
  let idatDone = false;
  let ended = false;
  for (let at = 8; at < b.length; ) {
    if (at + 12 > b.length) return undefined;
    const len = v.getUint32(at);
    const end = at + 12 + len;
    if (len > 0x7fffffff || end > b.length) return undefined;
    for (let i = at + 4; i < at + 8; i++) if (!isLetter(b[i]!)) return undefined;
    const type = te.decode(b.subarray(at + 4, at + 8));
    if (crc32(b.subarray(at + 4, at + 8 + len)) !== v.getUint32(at + 8 + len)) return undefined;
    if (type === 'IDAT') {
      // IDAT chunks must follow one another (libpng refuses a split stream).
      if (idatDone) return undefined;
      idat.push(b.subarray(at + 8, at + 8 + len));
      idatBytes += len;
    } else if (type === 'IEND') {
      ended = true;
      break;
    } else {
      if (idat.length > 0) idatDone = true;
      // A second IHDR and an unknown critical chunk are sharp's to refuse; transparency
      // and colour profiles change its output.
      if ((type === 'IHDR' && at !== 8) || type === 'tRNS' || type === 'iCCP' || type === 'PLTE' || (type !== 'IHDR' && (type.charCodeAt(0) & 0x20) === 0)) return undefined;
    }
    at = end;
  }
  if (!ended || idatBytes === 0) return undefined;
  const stride = width * channels;
  const expected = (stride + 1) * height;
  let raw: Buffer;
  try {
    // The output bound makes a stream that inflates to more than the header says stop
    // there (a decompression bomb among others) instead of filling memory.
    raw = inflateSync(idat.length === 1 ? idat[0]! : Buffer.concat(idat, idatBytes), { maxOutputLength: expected });
  } catch {
    return undefined;
  }
  if (raw.length !== expected) return undefined;
  const pixels = new Uint8Array(stride * height);
  return unfilter(raw, pixels, stride, height, channels) ? { pixels, channels } : undefined;
}

/** Chunk type bytes are ASCII letters; anything else is a damaged file, for sharp to refuse. */
function isLetter(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

/** Undoes the per-row filters (PNG spec §9) of `raw` into `out`; false on an unknown filter type. */
function unfilter(raw: Uint8Array, out: Uint8Array, stride: number, height: number, bpp: number): boolean {
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const src = y * (stride + 1) + 1;
    const row = y * stride;
    const up = row - stride;
    switch (filter) {
      case 0:
        out.set(raw.subarray(src, src + stride), row);
        break;
      case 1:
        for (let x = 0; x < stride; x++) out[row + x] = (raw[src + x]! + (x >= bpp ? out[row + x - bpp]! : 0)) & 0xff;
        break;
      case 2:
        for (let x = 0; x < stride; x++) out[row + x] = (raw[src + x]! + (y > 0 ? out[up + x]! : 0)) & 0xff;
        break;
      case 3:
        for (let x = 0; x < stride; x++) {
          const a = x >= bpp ? out[row + x - bpp]! : 0;
          const u = y > 0 ? out[up + x]! : 0;
          out[row + x] = (raw[src + x]! + ((a + u) >> 1)) & 0xff;
        }
        break;
      case 4:
        for (let x = 0; x < stride; x++) {
          const a = x >= bpp ? out[row + x - bpp]! : 0;
          const u = y > 0 ? out[up + x]! : 0;
          const c = x >= bpp && y > 0 ? out[up + x - bpp]! : 0;
          const p = a + u - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - u);
          const pc = Math.abs(p - c);
          out[row + x] = (raw[src + x]! + (pa <= pb && pa <= pc ? a : pb <= pc ? u : c)) & 0xff;
        }
        break;
      default:
        return false;
    }
  }
  return true;
}
