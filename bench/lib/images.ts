// Request images for the benches: a real Fashion-MNIST test item as PNG (what the
// trained model is for) and a synthetic photo-like JPEG for the 224x224 load model.
import sharp from 'sharp';
import { loadSplit } from '../../scripts/train/idx.ts';
import { mulberry32 } from '../../scripts/train/prng.ts';

/** Test-set item `index` of Fashion-MNIST, 28x28 grayscale, as PNG bytes. */
export async function fashionPng(index = 0): Promise<{ png: Buffer; label: number }> {
  const split = loadSplit('t10k', index + 1);
  const pixels = Buffer.from(split.images.subarray(index * 784, (index + 1) * 784));
  const png = await sharp(pixels, { raw: { width: 28, height: 28, channels: 1 } }).png().toBuffer();
  return { png, label: split.labels[index]! };
}

/**
 * A `size`x`size` RGB JPEG: smooth gradients plus seeded noise, so it compresses
 * like a photo rather than a flat colour. Slightly larger than 224 so that the
 * broker resizes, as it would for a camera frame.
 */
export async function syntheticJpeg(size = 256, quality = 85, seed = 7): Promise<Buffer> {
  const rng = mulberry32(seed);
  const px = Buffer.alloc(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const i = (y * size + x) * 3;
      const n = (rng() - 0.5) * 40;
      px[i] = clamp((x / size) * 255 + n);
      px[i + 1] = clamp((y / size) * 255 + n);
      px[i + 2] = clamp(128 + 100 * Math.sin((x + y) / 17) + n);
    }
  }
  return sharp(px, { raw: { width: size, height: size, channels: 3 } }).jpeg({ quality }).toBuffer();
}

function clamp(v: number): number {
  return Math.max(0, Math.min(255, Math.round(v)));
}
