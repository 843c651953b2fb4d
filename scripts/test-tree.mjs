// Completes the compiled test tree (.test-build/, written by `tsc -b tsconfig.test.json`) so
// that the compiled tests find, relative to their own import.meta.url, everything they find
// from the sources: every other entry of the repo (models/, proto/, migrations/, native/,
// docs/, dist/, node_modules/, package.json, README.md, ...) is linked in, and so is every
// file of the compiled directories that tsc does not write (the .ts sources next to their
// .js, for the tests that read them or spawn them through tsx; .mjs, .proto and other
// fixtures). Links are relative, made once, and repaired if they point elsewhere; real
// files (tsc's output) are never touched. Also writes .test-build/taprc: package.json's
// "tap" config for the compiled tests, with no tsx (`npm test` runs tap with
// TAP_RCFILE=.test-build/taprc).
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const OUT = join(ROOT, '.test-build');
/** Compiled by tsconfig.test.json: mirrored file by file. */
const COMPILED = new Set(['src', 'test', 'bench', 'scripts', 'load']);
/** Never linked in. */
const SKIP = new Set(['.git', '.test-build', '.tap']);

/** Makes `at` a symlink to `target` unless it is already one, or a real file. */
function link(target, at) {
  const want = relative(dirname(at), target);
  let st;
  try {
    st = lstatSync(at);
  } catch {
    mkdirSync(dirname(at), { recursive: true });
    symlinkSync(want, at);
    return;
  }
  if (!st.isSymbolicLink()) return; // tsc's output, or a directory of it
  if (readlinkSync(at) === want) return;
  rmSync(at);
  symlinkSync(want, at);
}

/** Links every file under `dir` (a compiled directory of the repo) not written by tsc. */
function mirror(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    const at = join(OUT, relative(ROOT, path));
    if (e.isDirectory()) {
      if (e.name === 'node_modules') link(path, at);
      else if (e.name === 'results' && dir === join(ROOT, 'bench')) link(path, at);
      else mirror(path);
    } else {
      link(path, at);
    }
  }
}

/**
 * Removes what no longer has a source under `dir` (a compiled directory of the tree): a .js or
 * .js.map tsc wrote for a .ts since deleted or renamed (tsc never removes them, and tap would
 * still run a stale test), and links left dangling.
 */
function prune(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    const source = join(ROOT, relative(OUT, path));
    if (e.isSymbolicLink()) {
      if (!existsSync(path)) rmSync(path);
    } else if (e.isDirectory()) {
      prune(path);
    } else if (/\.js(\.map)?$/.test(e.name) && !existsSync(source.replace(/\.js(\.map)?$/, '.ts')) && !existsSync(source)) {
      rmSync(path);
    }
  }
}

mkdirSync(OUT, { recursive: true });
for (const dir of COMPILED) if (existsSync(join(OUT, dir))) prune(join(OUT, dir));
for (const e of readdirSync(ROOT, { withFileTypes: true })) {
  if (SKIP.has(e.name)) continue;
  if (COMPILED.has(e.name) && e.isDirectory()) mirror(join(ROOT, e.name));
  else link(join(ROOT, e.name), join(OUT, e.name));
}

// tap's config for the compiled tests: package.json's, with no tsx. (tap runs every test
// with --enable-source-maps: stack traces point to the .ts lines through tsc's .js.map.)
const { tap } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const rc = {
  ...tap,
  'node-arg': (tap['node-arg'] ?? []).filter((a) => !/^--(import|loader|require)=tsx$/.test(a)),
  include: ['.test-build/test/**/*.test.js'],
};
writeFileSync(join(OUT, 'taprc'), `# written by scripts/test-tree.mjs from package.json's "tap"\n${JSON.stringify(rc, null, 2)}\n`);
