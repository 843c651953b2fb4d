// Real images for tests: Fashion-MNIST test-set items encoded as PNG with sharp.
import sharp from 'sharp';
import { loadSplit } from '../../scripts/train/idx.ts';

export interface LabelledImage {
  readonly b64: string;
  readonly label: number;
}

export async function fashionPngs(count: number, offset = 0): Promise<LabelledImage[]> {
  const split = loadSplit('t10k', offset + count);
  const out: LabelledImage[] = [];
  for (let i = offset; i < offset + count; i++) {
    const pixels = Buffer.from(split.images.subarray(i * 784, (i + 1) * 784));
    const png = await sharp(pixels, { raw: { width: 28, height: 28, channels: 1 } }).png().toBuffer();
    out.push({ b64: png.toString('base64'), label: split.labels[i]! });
  }
  return out;
}

/** Runs `fn` over items with at most `concurrency` in flight. */
export async function mapLimit<T, R>(items: readonly T[], concurrency: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i]!, i);
      }
    }),
  );
  return results;
}
