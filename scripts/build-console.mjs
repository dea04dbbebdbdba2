#!/usr/bin/env node
// Builds the web console (console/) into console-dist/, which the API serves at /ui (src/api/routes/console.ts).
//
//   node scripts/build-console.mjs             build (npm run build:console)
//   node scripts/build-console.mjs --if-stale  build only when console-dist/ is missing or was built from other
//                                              inputs (npm's prestart: `npm start` never serves a stale console)
//
// Staleness is a hash of the inputs (console/, this script, the lockfile that pins lit and uPlot), not file times:
// a checkout or a copy keeps times that say nothing about what was built.
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const SOURCE = join(ROOT, 'console');
const OUT = join(ROOT, 'console-dist');
const STAMP = join(OUT, 'build.json');

async function files(dir) {
  const out = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await files(path)));
    else out.push(path);
  }
  return out.sort();
}

async function inputsHash() {
  const hash = createHash('sha256');
  const inputs = [...(await files(SOURCE)), fileURLToPath(import.meta.url), join(ROOT, 'package-lock.json')];
  for (const path of inputs) {
    hash.update(relative(ROOT, path));
    hash.update('\0');
    hash.update(await readFile(path));
    hash.update('\0');
  }
  return hash.digest('hex');
}

async function builtFrom() {
  try {
    return JSON.parse(await readFile(STAMP, 'utf8')).inputs;
  } catch {
    return undefined;
  }
}

const started = performance.now();
const inputs = await inputsHash();
if (process.argv.includes('--if-stale') && (await builtFrom()) === inputs) {
  process.stdout.write('console: console-dist/ is up to date\n');
  process.exit(0);
}
process.stdout.write('console: building console/ into console-dist/ …\n');
// Built next to the old one and swapped in: a server running meanwhile serves the old files or the new, never half.
const staging = `${OUT}.${process.pid}.tmp`;
await rm(staging, { recursive: true, force: true });
await mkdir(staging, { recursive: true });
const result = await esbuild.build({
  absWorkingDir: ROOT,
  entryPoints: { app: 'console/src/main.ts' },
  outdir: staging,
  bundle: true,
  format: 'esm',
  target: ['chrome120', 'firefox120', 'safari17'],
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  metafile: true,
  logLevel: 'warning',
});
for (const file of ['index.html', 'favicon.svg']) await copyFile(join(SOURCE, file), join(staging, file));
await writeFile(
  join(staging, 'build.json'),
  `${JSON.stringify({ inputs, builtAt: new Date().toISOString() }, null, 2)}\n`,
);
const old = `${OUT}.${process.pid}.old`;
await rename(OUT, old).catch((err) => {
  if (err.code !== 'ENOENT') throw err;
});
await rename(staging, OUT);
await rm(old, { recursive: true, force: true });
const sizes = Object.entries(result.metafile.outputs)
  .filter(([path]) => !path.endsWith('.map') && !path.endsWith('.txt'))
  .map(([path, o]) => `${relative(staging, join(ROOT, path))} ${(o.bytes / 1024).toFixed(0)} KiB`);
process.stdout.write(`console: built ${sizes.join(', ')} in ${Math.round(performance.now() - started)} ms\n`);
