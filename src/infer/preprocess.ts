// Image bytes -> model input tensor, as the manifest says: decode, resize, channels,
// scale to [0, 1], normalise by mean/std, lay out as NCHW or NHWC.
import sharp from 'sharp';
import type { ModelManifest } from './manifest.ts';

const FORMATS = new Set(['png', 'jpeg', 'webp']);

export type Preprocessed =
  | { ok: true; tensor: Float32Array; dims: number[] }
  | { ok: false; code: 'unsupported_image' | 'image_too_large'; message: string };

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

  let raw: Buffer;
  try {
    // limitInputPixels guards against decompression bombs: sharp refuses before decoding.
    const img = sharp(bytes, { limitInputPixels: maxPixels, failOn: 'error' });
    const meta = await img.metadata();
    if (meta.format === undefined || !FORMATS.has(meta.format)) {
      return { ok: false, code: 'unsupported_image', message: `image format ${meta.format ?? 'unknown'} is not supported (png, jpeg, webp)` };
    }
    if ((meta.width ?? 0) * (meta.height ?? 0) > maxPixels) {
      return { ok: false, code: 'image_too_large', message: `image has ${meta.width}x${meta.height} pixels, more than the limit of ${maxPixels}` };
    }
    let p = img.resize(width, height, { fit: 'cover' });
    p = c === 1 ? p.grayscale() : p.removeAlpha().toColourspace('srgb');
    raw = await p.raw().toBuffer();
  } catch (err) {
    const message = (err as Error).message;
    if (/pixel limit/i.test(message)) return { ok: false, code: 'image_too_large', message: `image has more than ${maxPixels} pixels` };
    return { ok: false, code: 'unsupported_image', message: `bytes are not a supported image: ${message}` };
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
