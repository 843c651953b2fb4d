// JPEGs whose scan data is missing or corrupt: libjpeg only warns, and fills what it could
// not decode with gray. Such a file is refused (415 unsupported_image), never classified;
// a JPEG with a harmless warning (bytes after its scan) still decodes as before.
import t from 'tap';
import sharp from 'sharp';
import { preprocess } from '../../src/infer/preprocess.ts';
import type { ModelManifest } from '../../src/infer/manifest.ts';
import { mulberry32 } from '../../scripts/train/prng.ts';

const m = {
  name: 'm',
  version: '1',
  input: { name: 'x', layout: 'NCHW', channels: 3, height: 28, width: 28, defaultSize: 28, mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] },
  output: { name: 'y', kind: 'logits' },
  labels: ['a'],
  batching: { maxBatchSize: 1, preferredBatchSizes: [], maxQueueDelayUs: 0 },
} as unknown as ModelManifest;

const random = mulberry32(7);
const noise = Buffer.from(Array.from({ length: 28 * 28 * 3 }, () => Math.floor(random() * 256)));
const jpeg = await sharp(noise, { raw: { width: 28, height: 28, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();

/** The JPEG with its frame header (SOF0) declaring another size: the scan data is for 28x28. */
function withFrameSize(size: number): Buffer {
  const b = Buffer.from(jpeg);
  for (let i = 2; i < b.length - 9; i++) {
    if (b[i] === 0xff && b[i + 1] === 0xc0) {
      b.writeUInt16BE(size, i + 5);
      b.writeUInt16BE(size, i + 7);
      return b;
    }
  }
  throw new Error('no SOF0 marker');
}

t.test('a JPEG whose header promises more pixels than its data holds: 415, not a gray picture classified', async (t) => {
  const good = await preprocess(jpeg, m, undefined, 1e8);
  t.ok(good.ok, 'the file itself decodes');
  const got = await preprocess(withFrameSize(400), m, undefined, 1e8);
  t.equal(got.ok, false);
  if (!got.ok) {
    t.equal(got.code, 'unsupported_image');
    t.match(got.detail, /premature end of data segment/, 'libjpeg\'s warning, for the log');
  }
});

t.test('a JPEG with stray bytes before its end marker (a warning that loses no pixel): decoded as the clean file', async (t) => {
  const eoi = jpeg.lastIndexOf(Buffer.from([0xff, 0xd9]));
  const stray = Buffer.concat([jpeg.subarray(0, eoi), Buffer.from([0x00, 0x00, 0x00]), jpeg.subarray(eoi)]);
  const [clean, warned] = await Promise.all([preprocess(jpeg, m, undefined, 1e8), preprocess(stray, m, undefined, 1e8)]);
  t.ok(clean.ok && warned.ok, 'both decode');
  if (clean.ok && warned.ok) t.same(Array.from(warned.tensor), Array.from(clean.tensor), 'the same tensor');
});

t.test('a JPEG whose scan data is whole but whose end marker is missing (cameras, MJPEG grabbers): decoded as the whole file; one cut inside its data still 415', async (t) => {
  t.same([...jpeg.subarray(-2)], [0xff, 0xd9], 'the file ends with EOI');
  const noEoi = jpeg.subarray(0, jpeg.length - 2);
  const [clean, open] = await Promise.all([preprocess(jpeg, m, undefined, 1e8), preprocess(noEoi, m, undefined, 1e8)]);
  t.ok(open.ok, 'decoded');
  if (clean.ok && open.ok) t.same(Array.from(open.tensor), Array.from(clean.tensor), 'the same tensor');
  const cut = await preprocess(jpeg.subarray(0, Math.floor(jpeg.length * 0.7)), m, undefined, 1e8);
  t.equal(cut.ok, false, 'data cut short: refused, EOI or not');
  if (!cut.ok) t.equal(cut.code, 'unsupported_image');
});

t.test('a progressive JPEG cut between two of its scans: still 415 (with the end marker put back it would decode clean, from its coarse scans only)', async (t) => {
  const progressive = await sharp(noise, { raw: { width: 28, height: 28, channels: 3 } }).jpeg({ quality: 90, progressive: true }).toBuffer();
  // Each scan starts with SOS (FF DA): cut right before the third.
  const starts: number[] = [];
  for (let i = 0; i < progressive.length - 1; i++) if (progressive[i] === 0xff && progressive[i + 1] === 0xda) starts.push(i);
  t.ok(starts.length >= 3, `${starts.length} scans`);
  const cut = await preprocess(progressive.subarray(0, starts[2]), m, undefined, 1e8);
  t.equal(cut.ok, false);
  const whole = await preprocess(progressive, m, undefined, 1e8);
  t.ok(whole.ok, 'the whole file decodes');
});
