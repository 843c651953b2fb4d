// Image bytes -> model input tensor, as the manifest says: decode, resize, channels,
// scale to [0, 1], normalise by mean/std, lay out as NCHW or NHWC.
import sharp from 'sharp';
import type { ModelManifest } from './manifest.ts';

/** png, jpeg or webp by their signatures; anything else (gif, text...) is refused before sharp sees it. */
export function sniff(b: Uint8Array): 'png' | 'jpeg' | 'webp' | undefined {
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 && b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a) return 'png';
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  // RIFF....WEBP
  if (b.length >= 12 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46 && b[8] === 0x57 && b[9] === 0x45 && b[10] === 0x42 && b[11] === 0x50) return 'webp';
  return undefined;
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
  let raw: Buffer;
  try {
    // limitInputPixels guards against decompression bombs: sharp refuses while reading the
    // header, before decoding. No metadata() first: the format comes from the magic bytes
    // above, and a second pass over the header cost 0.5 ms of a 2.9 ms preprocess of a
    // 256x256 JPEG (docs/benchmarks.md, "Hot path").
    let p = sharp(bytes, { limitInputPixels: maxPixels, failOn: 'error' }).resize(width, height, { fit: 'cover' });
    p = c === 1 ? p.grayscale() : p.removeAlpha().toColourspace('srgb');
    raw = await p.raw().toBuffer();
  } catch (err) {
    const message = (err as Error).message;
    if (/pixel limit/i.test(message)) return { ok: false, code: 'image_too_large', message: `image has more than ${maxPixels} pixels` };
    // The decoder's own words (`vipspng: ...`) are for the log, not the client.
    return { ok: false, code: 'unsupported_image', message: `bytes are not a valid ${format} image`, detail: message };
  }

  // sharp's grayscale() may still hand back 3 channels for some inputs; read what it gave.
  const got = raw.length / (width * height);
  const plane = width * height;
  const tensor = into !== undefined ? into.subarray(offset, offset + c * plane) : new Float32Array(c * plane);
  const scale = input.std.map((s) => 1 / (255 * s));
  const shift = input.mean.map((m, i) => m / input.std[i]!);
  if (input.layout === 'NCHW') {
    for (let ch = 0; ch < c; ch++) {
      const k = scale[ch]!;
      const b = shift[ch]!;
      const base = ch * plane;
      for (let i = 0; i < plane; i++) tensor[base + i] = raw[i * got + ch]! * k - b;
    }
  } else {
    for (let i = 0; i < plane; i++) for (let ch = 0; ch < c; ch++) tensor[i * c + ch] = raw[i * got + ch]! * scale[ch]! - shift[ch]!;
  }
  return { ok: true, tensor, dims: input.layout === 'NCHW' ? [1, c, height, width] : [1, height, width, c] };
}
