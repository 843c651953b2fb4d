// Reader for the gzip-compressed IDX files Fashion-MNIST ships as.
// IDX: 2 zero bytes, 1 byte element type (0x08 = uint8), 1 byte rank,
// then `rank` big-endian uint32 dimensions, then the data.

import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';

export const DATA_DIR = process.env.FASHION_MNIST_DIR ?? '/usr/share/datasets/fashion-mnist';

/** Fashion-MNIST's pixel statistics (after /255); the server applies exactly these. */
export const MEAN = 0.286;
export const STD = 0.353;

export const LABELS = [
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
  'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
] as const;

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

export function readIdx(path: string): IdxArray {
  const buf = gunzipSync(readFileSync(path));
  if (buf[0] !== 0 || buf[1] !== 0) throw new Error(`${path}: bad IDX magic`);
  if (buf[2] !== 0x08) throw new Error(`${path}: element type 0x${buf[2]!.toString(16)} is not uint8`);
  const rank = buf[3]!;
  const dims: number[] = [];
  for (let i = 0; i < rank; i++) dims.push(buf.readUInt32BE(4 + 4 * i));
  const offset = 4 + 4 * rank;
  const count = dims.reduce((a, b) => a * b, 1);
  if (buf.length !== offset + count) throw new Error(`${path}: expected ${count} elements, file has ${buf.length - offset}`);
  return { dims, data: new Uint8Array(buf.buffer, buf.byteOffset + offset, count) };
}

export interface Split {
  /** n x 784 raw pixels, row-major. */
  images: Uint8Array;
  labels: Uint8Array;
  n: number;
}

export function loadSplit(split: 'train' | 't10k', limit?: number): Split {
  const img = readIdx(join(DATA_DIR, `${split}-images-idx3-ubyte.gz`));
  const lab = readIdx(join(DATA_DIR, `${split}-labels-idx1-ubyte.gz`));
  if (img.dims.length !== 3 || img.dims[1] !== 28 || img.dims[2] !== 28) throw new Error(`unexpected image dims ${img.dims}`);
  if (lab.dims[0] !== img.dims[0]) throw new Error('image and label counts differ');
  const n = Math.min(img.dims[0]!, limit ?? Infinity);
  return { images: img.data.subarray(0, n * 784), labels: lab.data.subarray(0, n), n };
}

/** pixel/255 then (x - MEAN)/STD, as float32: exactly what the server feeds the model. */
export function normalise(images: Uint8Array): Float32Array {
  const out = new Float32Array(images.length);
  for (let i = 0; i < images.length; i++) out[i] = (images[i]! / 255 - MEAN) / STD;
  return out;
}
