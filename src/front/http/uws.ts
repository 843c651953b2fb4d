// uWebSockets.js as the broker loads it: the npm build (@trufflesuite's 20.30) with its
// header-name check widened. Its parser (uWebSockets' HttpParser.h from Oct 2022 to Feb 2024)
// takes only letters, digits and '-' in a field name; a request with `session_id: …` (Codex
// CLI sends it on every call) or any other name with '_' got no answer at all. Upstream
// widened it to every RFC 9110 token character in 2024; no build of that is on npm. So the
// addon for Linux x64 on Node 20 (ABI 115) is patched by its bytes, 13 in 5 places, to also
// take '^', '_' and '`' (the three token characters next to the letters): an exhaustive test
// of every byte at 12 positions found exactly those three changed. The parser lowercases a
// name by OR-ing 0x20, which makes '_' 0x7f: such a header reaches the front as `session\x7fid`,
// and no header the broker reads has an '_' (nor can one pose as `x-api-key`).
//
// The patch applies only to the file it was made from (its SHA-256, checked at every start: an
// upgraded package is loaded as it is), written once to a cache next to the package or to a
// folder of this user's own in the temporary directory, and hashed again before it is loaded.
// The cache is only as writable as node_modules is (whoever can write there can replace the
// addon itself), and the temporary folder only by this user. Any other build, a cache that
// cannot be written, or UWS_HEADER_PATCH=false loads the package as it is.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { existsSync, lstatSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type * as UwsModule from 'uWebSockets.js';
import { bool } from '../../config/env.ts';

const require = createRequire(import.meta.url);

interface BinaryPatch {
  /** The addon's file name under the package's binaries/. */
  readonly file: string;
  readonly sha256: string;
  readonly patchedSha256: string;
  /** File offset, bytes there now, bytes to write (hex). */
  readonly edits: ReadonlyArray<readonly [offset: number, from: string, to: string]>;
}

const HEADER_NAME_PATCHES: readonly BinaryPatch[] = [
  {
    file: 'uws_linux_x64_115.node',
    sha256: 'f158fb441f7e2e37b3ab9a56782fe37f4c0d33b5cd32e96ee5c0120ce7db7ced',
    patchedSha256: 'f9dd0ec32ff184dc0830e4c47c03b693d4efd31c8d4e510ce485cfe53b294ed4',
    edits: [
      // The 8-byte check: hasBetween(x, 'Z', 'a') becomes hasBetween(x, 'Z', '^') (its constant
      // ~0ULL/255*(127+n)), so that only '[', '\' and ']' are refused between the letters.
      [0xeb4f5, 'e0e0e0e0e0e0e0e0', 'dddddddddddddddd'],
      // The byte check's refusal goes to a third range test (below) instead of the name's end.
      [0xeb569, 'eb2e', 'eb1f'],
      // The byte loop reuses the first byte's check (the same letters, '-' and digits) and so
      // frees the bytes of its own copy for that third test.
      [0xeb580, '89f8', 'ebcb'],
      // The third test: (x - 0x5e) < 3, '^', '_' and '`'.
      [0xeb58a, '8d77d0', '8d77a2'],
      [0xeb593, '4080fe0a', '4080fe03'],
    ],
  },
];

export type Uws = typeof UwsModule;

export interface LoadedUws {
  readonly uws: Uws;
  /** Whether header names with '_' are read (the patched addon runs). */
  readonly underscoreHeaders: boolean;
  /** Why not, when not. */
  readonly note?: string;
}

let loaded: LoadedUws | undefined;

/** The uWS module, patched where the patch applies; once per thread. */
export function loadUws(env: NodeJS.ProcessEnv = process.env): LoadedUws {
  loaded ??= load(env);
  return loaded;
}

function load(env: NodeJS.ProcessEnv): LoadedUws {
  const plain = (note: string): LoadedUws => ({ uws: require('uWebSockets.js') as Uws, underscoreHeaders: false, note });
  // Read as loadConfig validated it at start (any spelling of false).
  if (!bool(env, 'UWS_HEADER_PATCH', true)) return plain(`UWS_HEADER_PATCH=${env['UWS_HEADER_PATCH']}`);
  const file = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
  const patch = HEADER_NAME_PATCHES.find((p) => p.file === file);
  if (patch === undefined) return plain(`no header-name patch for ${file}`);
  const pkg = dirname(require.resolve('uWebSockets.js/package.json'));
  try {
    const path = patchedCopy(patch, join(pkg, 'binaries', file), pkg);
    if (path === undefined) return plain(`${file} is not the build the patch was made for, or no folder could hold the patched copy`);
    return { uws: require(path) as Uws, underscoreHeaders: true };
  } catch (err) {
    return plain(`patched copy failed: ${(err as Error).message}`);
  }
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * The patched addon's path (made if missing), or undefined when the original is another build.
 * Kept in node_modules/.cache (the image build makes it there, as root), else in a folder of
 * this user's own in the temporary directory (a read-only node_modules, user node).
 */
function patchedCopy(patch: BinaryPatch, original: string, pkg: string): string | undefined {
  const bytes = readFileSync(original);
  if (sha256(bytes) !== patch.sha256) return undefined;
  const name = `uws-${patch.patchedSha256.slice(0, 16)}.node`;
  const dirs = [join(pkg, '..', '.cache', 'edge-broker'), privateTmp()].filter((d): d is string => d !== undefined);
  for (const dir of dirs) {
    const cached = join(dir, name);
    // A copy left by an earlier start is loaded only if it is still exactly the patched build.
    try {
      if (existsSync(cached) && sha256(readFileSync(cached)) === patch.patchedSha256) return cached;
    } catch {
      // Unreadable here: the next folder.
    }
  }
  for (const [offset, from, to] of patch.edits) {
    const was = Buffer.from(from, 'hex');
    if (!bytes.subarray(offset, offset + was.length).equals(was)) return undefined;
    Buffer.from(to, 'hex').copy(bytes, offset);
  }
  if (sha256(bytes) !== patch.patchedSha256) return undefined;
  for (const dir of dirs) {
    const path = writeOnce(bytes, dir, name);
    if (path !== undefined) return path;
  }
  return undefined;
}

/** A folder under the temporary directory that only this user can write (none if another owns it). */
function privateTmp(): string | undefined {
  const uid = process.getuid?.();
  if (uid === undefined) return undefined;
  const dir = join(tmpdir(), `edge-broker-${uid}`);
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch {
    // It exists: used only if it is still this user's alone, so that no one can swap the file between its check and its load.
  }
  try {
    const s = lstatSync(dir);
    return s.isDirectory() && s.uid === uid && (s.mode & 0o022) === 0 ? dir : undefined;
  } catch {
    return undefined;
  }
}

/** Written beside, then renamed into place (threads starting together each write whole files). */
function writeOnce(bytes: Buffer, dir: string, name: string): string | undefined {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const tmp = join(dir, `${name}.${process.pid}.${Math.random().toString(36).slice(2)}`);
    writeFileSync(tmp, bytes, { mode: 0o755 });
    const path = join(dir, name);
    renameSync(tmp, path);
    return path;
  } catch {
    return undefined;
  }
}
