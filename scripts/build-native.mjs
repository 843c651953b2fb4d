// `npm ci` runs this (package.json "install"): builds native/'s addon with node-gyp
// against the installed Node's own headers, so that nothing is downloaded. The addon is
// optional: when a C++ toolchain (g++, make, python3) or the headers are missing, or the
// build fails, this says so and exits 0, and the broker converts pixels in JavaScript
// (src/infer/native.ts; the start-up log names the path in use).
// EDGE_NATIVE_BUILD=skip skips the build.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = join(root, 'native');
const built = join(dir, 'build', 'Release', 'edge_native.node');
const say = (msg) => console.log(`[native] ${msg}`);

function skip(why) {
  // An addon from an earlier build would still load; "not built" must mean not there.
  rmSync(join(dir, 'build'), { recursive: true, force: true });
  say(`not built (${why}): the broker converts pixels in JavaScript`);
  process.exit(0);
}

if (process.env.EDGE_NATIVE_BUILD === 'skip') skip('EDGE_NATIVE_BUILD=skip');
// npm passes its bundled node-gyp to install scripts; outside npm, look beside this node.
const gyp = [process.env.npm_config_node_gyp, join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')].find((p) => p !== undefined && p !== '' && existsSync(p));
if (gyp === undefined) skip('node-gyp not found');
// The headers of this very node (official builds and Debian's nodejs-dev put them there):
// node-gyp would download them otherwise.
const nodedir = join(dirname(process.execPath), '..');
if (!existsSync(join(nodedir, 'include', 'node', 'node_api.h'))) skip(`no Node headers under ${join(nodedir, 'include', 'node')}`);
for (const tool of ['make', 'python3']) {
  if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).status !== 0) skip(`${tool} not found`);
}
if (spawnSync(process.env.CXX ?? 'c++', ['--version'], { stdio: 'ignore' }).status !== 0) skip(`no C++ compiler (${process.env.CXX ?? 'c++'})`);

const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--loglevel=warn'], { cwd: dir, stdio: 'inherit', timeout: 300_000 });
if (r.status !== 0) {
  skip(`node-gyp exited ${r.status ?? r.signal}`);
}
try {
  const addon = createRequire(import.meta.url)(built);
  if (typeof addon.toTensor !== 'function') throw new Error('no toTensor export');
} catch (err) {
  skip(`the built addon does not load: ${err.message.split('\n')[0]}`);
}
say(`built ${built.slice(root.length + 1)}`);
