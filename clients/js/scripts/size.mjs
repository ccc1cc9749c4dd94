// Measures the min+gzip size of this SDK beside centrifuge's and socket.io-client's, each
// bundled for the browser from its npm package (installed as dev dependencies, so the versions
// are package-lock.json's) with esbuild (minified) and gzipped with zlib (level 9), in the same
// run. Prints a Markdown table; fails when this SDK is not the smallest of the three.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const here = join(dirname(fileURLToPath(import.meta.url)), '..');
const version = (name) => JSON.parse(readFileSync(join(here, 'node_modules', name, 'package.json'), 'utf8')).version;
const own = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8'));

const candidates = [
  { name: own.name, version: own.version, entry: "export * from './dist/index.js';" },
  { name: 'centrifuge', version: version('centrifuge'), entry: "export * from 'centrifuge';" },
  { name: 'socket.io-client', version: version('socket.io-client'), entry: "export * from 'socket.io-client';" },
];

const rows = [];
for (const c of candidates) {
  const result = await build({
    stdin: { contents: c.entry, resolveDir: here, loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    legalComments: 'none',
    write: false,
    logLevel: 'error',
  });
  const code = result.outputFiles[0].contents;
  rows.push({ ...c, min: code.length, gzip: gzipSync(code, { level: 9 }).length });
}
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log('| package | version | minified | min+gzip |');
console.log('| --- | --- | ---: | ---: |');
for (const r of rows) console.log(`| \`${r.name}\` | ${r.version} | ${kib(r.min)} | ${kib(r.gzip)} |`);
const [ours, ...others] = rows;
const larger = others.filter((r) => r.gzip <= ours.gzip);
if (larger.length) {
  console.error(`size: ${ours.name} (${kib(ours.gzip)}) is not the smallest: ${larger.map((r) => `${r.name} ${kib(r.gzip)}`).join(', ')}`);
  process.exit(1);
}
console.log(`size: ${ours.name} is the smallest (${kib(ours.gzip)} min+gzip)`);
