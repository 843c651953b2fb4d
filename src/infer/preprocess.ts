// Image bytes -> model input tensor, as the manifest says: decode, resize, channels,
// scale to [0, 1], normalise by mean/std, lay out as NCHW or NHWC.
import sharp from 'sharp';
import type { ModelManifest } from './manifest.ts';
import { decodeSimplePng, pngHeader } from './png.ts';
import { conversionAddon } from './native.ts';
import { sniff } from './sniff.ts';

export { sniff };

/** libjpeg's warnings (jerror.h) that mean pixels were lost: premature end, bad entropy code, lost restart marker. */
const JPEG_LOST_PIXELS = /premature end|bad Huffman code|bad arithmetic code|instead of RST/i;

function endsWithEoi(b: Uint8Array): boolean {
  return b.length >= 2 && b[b.length - 2] === 0xff && b[b.length - 1] === 0xd9;
}

/** Whether a JPEG's frame is progressive (SOF2, SOF6, SOF10, SOF14): its markers walked up to its first scan. */
function progressive(b: Uint8Array): boolean {
  let i = 2;
  while (i + 3 < b.length && b[i] === 0xff) {
    const marker = b[i + 1]!;
    if (marker === 0xc2 || marker === 0xc6 || marker === 0xca || marker === 0xce) return true;
    // The first scan (SOS): every frame header comes before it.
    if (marker === 0xda) return false;
    // Fill bytes, and markers without a length.
    if (marker === 0xff || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      i += marker === 0xff ? 1 : 2;
      continue;
    }
    i += 2 + ((b[i + 2]! << 8) | b[i + 3]!);
  }
  return false;
}

function withEoi(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(b.length + 2);
  out.set(b);
  out[b.length] = 0xff;
  out[b.length + 1] = 0xd9;
  return out;
}

export type Preprocessed =
  | { ok: true; tensor: Float32Array; dims: number[] }
  | { ok: false; code: 'unsupported_image' | 'image_too_large'; message: string; detail?: string };

/**
 * `into`/`offset`: write the tensor there (one image's slot of a batch tensor) instead of
 * a new array; the returned `tensor` is then that slot.
 */
export async function preprocess(
  bytes: Uint8Array,
  manifest: ModelManifest,
  size: number | undefined,
  maxPixels: number,
  into?: Float32Array,
  offset = 0,
): Promise<Preprocessed> {
  const { input } = manifest;
  const height = input.height ?? size ?? input.defaultSize;
  const width = input.width ?? size ?? input.defaultSize;
  const c = input.channels;

  const format = sniff(bytes);
  if (format === undefined) {
    return { ok: false, code: 'unsupported_image', message: 'image format is not supported (png, jpeg, webp)' };
  }
  const plane = width * height;
  const tensor = into !== undefined ? into.subarray(offset, offset + c * plane) : new Float32Array(c * plane);
  const dims = input.layout === 'NCHW' ? [1, c, height, width] : [1, height, width, c];
  if (format === 'png') {
    const png = pngHeader(bytes);
    // Only what the weighting adds: past the plain pixel count, sharp's own check speaks (after its CRC check).
    if (png !== undefined && png.width * png.height <= maxPixels && pngWeight(png) > maxPixels) return { ok: false, code: 'image_too_large', message: `image has more than ${maxPixels} pixels (a 16-bit PNG counts twice, an interlaced one twice again)` };
    if (plane <= Math.min(maxPixels, PNG_PATH_MAX_PIXELS) && pngTensor(bytes, manifest, width, height, tensor)) return { ok: true, tensor, dims };
  }
  let raw: Buffer;
  try {
    // limitInputPixels guards against decompression bombs: sharp refuses while reading the
    // header, before decoding. No metadata() first: the format comes from the magic bytes
    // above, and a second pass over the header cost 0.5 ms of a 2.9 ms preprocess of a
    // 256x256 JPEG (docs/benchmarks.md, "Hot path").
    const decode = (failOn: 'error' | 'warning', src: Uint8Array = bytes): Promise<Buffer> => {
      // sRGB for a 1-channel model too: sharp's grayscale() weighs linear light (red 127),
      // not the luma models trained with PIL or OpenCV saw (red 76); see luma601() below.
      return sharp(src, { limitInputPixels: maxPixels, failOn }).resize(width, height, { fit: 'cover' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
    };
    // libjpeg only warns of missing or corrupt scan data, and fills the gap with gray: a
    // 200 for a picture the client never sent. Those warnings refuse; others (extraneous
    // bytes, an unknown JFIF revision) leave the pixels whole, so the image is decoded anyway.
    const jpeg = (src: Uint8Array): Promise<Buffer> =>
      decode('warning', src).catch((err: Error) => {
        if (JPEG_LOST_PIXELS.test(err.message)) throw err;
        return decode('error', src);
      });
    if (format !== 'jpeg') raw = await decode('error');
    else {
      raw = await jpeg(bytes).catch((err: Error) => {
        // Whole scan data without the end-of-image marker (some cameras, MJPEG frame grabbers,
        // streaming encoders write no EOI; browsers show them): libjpeg says "premature end" for
        // it as for lost data. With the marker put back, such a file decodes clean; one whose
        // data is cut still warns, and is refused.
        // Not a progressive one: cut between two of its scans, it decodes clean with the marker
        // put back, its picture the coarse scans' (pixels off by up to 0.64 of the range).
        if (!/premature end/i.test(err.message) || endsWithEoi(bytes) || progressive(bytes)) throw err;
        return jpeg(withEoi(bytes));
      });
    }
  } catch (err) {
    const message = (err as Error).message;
    if (/pixel limit/i.test(message)) return { ok: false, code: 'image_too_large', message: `image has more than ${maxPixels} pixels` };
    // The decoder's own words (`vipspng: ...`) are for the log, not the client.
    return { ok: false, code: 'unsupported_image', message: `bytes are not a valid ${format} image`, detail: message };
  }

  const got = raw.length / plane;
  if (c === 1 && got >= 3) toTensor(luma601(raw, got, plane), 1, manifest, plane, tensor);
  else toTensor(raw, got, manifest, plane, tensor);
  return { ok: true, tensor, dims };
}

/**
 * Gray from gamma-encoded RGB (`got` bytes a pixel, alpha ignored) as PIL's convert('L')
 * computes it, and so torchvision's Grayscale of a PIL image: ITU-R BT.601 luma in 16-bit
 * fixed point, Convert.c's L24, rounded half up. The weights sum to 65536, so R = G = B = v
 * stays v. Written over the first `plane` bytes of `raw` (pixel i is read before byte i is
 * written), so no second buffer.
 */
export function luma601(raw: Uint8Array, got: number, plane: number): Uint8Array {
  for (let i = 0, j = 0; i < plane; i++, j += got) raw[i] = (raw[j]! * 19595 + raw[j + 1]! * 38470 + raw[j + 2]! * 7471 + 0x8000) >> 16;
  return raw.subarray(0, plane);
}

/**
 * A PNG's pixels as INFER_MAX_PIXELS weighs them: 16-bit samples take twice the memory and
 * time of 8-bit ones, and an interlaced image is decoded whole before any resize (a 200 KB
 * 4096² 16-bit interlaced PNG cost 130 MB and 2 s of CPU against sharp's plain pixel limit).
 */
function pngWeight(h: { width: number; height: number; depth: number; interlace: number }): number {
  return h.width * h.height * (h.depth === 16 ? 2 : 1) * (h.interlace === 1 ? 2 : 1);
}

/**
 * Up to this size a PNG at the input size decodes here: on a 28x28 image 40x cheaper than
 * sharp, on 224x224 about even (1.40 ms here with the conversion against 1.46 ms for
 * sharp's decode alone), and it runs on the worker's own thread, where sharp's runs on
 * libuv's pool beside the other batch's compute. So larger images stay with sharp.
 */
export const PNG_PATH_MAX_PIXELS = 256 * 256;

/**
 * A PNG already at the input size, into `tensor` without sharp, when its pixels need no
 * colour conversion: gray (or RGB with R = G = B, which luma601() leaves as it is) for
 * a 1-channel model, RGB(A) for a 3-channel one. False: sharp's to do.
 * See png.ts; test/infer/png.test.ts holds the result to sharp's, bit for bit.
 */
export function pngTensor(bytes: Uint8Array, manifest: ModelManifest, width: number, height: number, tensor: Float32Array): boolean {
  const png = decodeSimplePng(bytes, width, height);
  if (png === undefined) return false;
  const { pixels, channels } = png;
  if (manifest.input.channels === 1 ? channels >= 3 && !allGray(pixels, channels) : channels < 3) return false;
  toTensor(pixels, channels, manifest, width * height, tensor);
  return true;
}

function allGray(px: Uint8Array, channels: number): boolean {
  for (let i = 0; i < px.length; i += channels) if (px[i] !== px[i + 1] || px[i] !== px[i + 2]) return false;
  return true;
}

// Per manifest: the float32 each of the 256 byte values becomes, channel after channel in
// one array (as the native addon takes them), and each channel's 256 as a view of it.
const tables = new WeakMap<ModelManifest, { perChannel: Float32Array[]; joined: Float32Array }>();

function tablesFor(manifest: ModelManifest): { perChannel: Float32Array[]; joined: Float32Array } {
  let t = tables.get(manifest);
  if (t === undefined) {
    const { mean, std } = manifest.input;
    const joined = new Float32Array(256 * mean.length);
    const perChannel = mean.map((m, ch) => {
      // The same double expression as the arithmetic version, rounded to float32 once:
      // the table gives bit-identical values (test/infer/hotpath.test.ts).
      const k = 1 / (255 * std[ch]!);
      const b = m / std[ch]!;
      const row = joined.subarray(ch * 256, (ch + 1) * 256);
      for (let v = 0; v < 256; v++) row[v] = v * k - b;
      return row;
    });
    t = { perChannel, joined };
    tables.set(manifest, t);
  }
  return t;
}

/**
 * uint8 pixels (`got` bytes each, interleaved) -> the model's float32 input, scaled to
 * [0, 1] and normalised by mean/std, NCHW or NHWC. A 256-entry table per channel and one
 * pass over the pixels. For a 224x224x3 image the JavaScript loop takes 0.46 ms and the
 * native addon 0.06 ms, with the same tables and the same floats (docs/benchmarks.md,
 * "native/").
 */
export function toTensor(raw: Uint8Array, got: number, manifest: ModelManifest, plane: number, tensor: Float32Array): void {
  const c = manifest.input.channels;
  const addon = conversionAddon();
  if (addon !== undefined && got >= c && (c === 1 || c === 3)) {
    addon.toTensor(raw, got, plane, manifest.input.layout === 'NHWC', tablesFor(manifest).joined, tensor);
    return;
  }
  toTensorJs(raw, got, manifest, plane, tensor);
}

/** toTensor without the addon: what runs when native/ is not built or INFER_NATIVE=off. */
export function toTensorJs(raw: Uint8Array, got: number, manifest: ModelManifest, plane: number, tensor: Float32Array): void {
  const t = tablesFor(manifest).perChannel;
  const c = manifest.input.channels;
  if (c === 1) {
    const t0 = t[0]!;
    for (let i = 0, j = 0; i < plane; i++, j += got) tensor[i] = t0[raw[j]!]!;
  } else if (manifest.input.layout === 'NCHW') {
    const [t0, t1, t2] = t as [Float32Array, Float32Array, Float32Array];
    const p2 = 2 * plane;
    for (let i = 0, j = 0; i < plane; i++, j += got) {
      tensor[i] = t0[raw[j]!]!;
      tensor[plane + i] = t1[raw[j + 1]!]!;
      tensor[p2 + i] = t2[raw[j + 2]!]!;
    }
  } else {
    const [t0, t1, t2] = t as [Float32Array, Float32Array, Float32Array];
    for (let i = 0, j = 0, o = 0; i < plane; i++, j += got, o += 3) {
      tensor[o] = t0[raw[j]!]!;
      tensor[o + 1] = t1[raw[j + 1]!]!;
      tensor[o + 2] = t2[raw[j + 2]!]!;
    }
  }
}
