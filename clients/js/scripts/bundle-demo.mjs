// Bundles the built SDK (dist/index.js, from `npm run build`) into the one file the demo page
// loads, crates/switchboard-server/src/demo/switchboard.js, which is checked in so that the
// Rust build needs no npm. `--check` compares instead of writing and fails when the checked-in
// file is not what the SDK's source builds to (scripts/test runs it).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, '../../../crates/switchboard-server/src/demo/switchboard.js');
const result = await build({
  entryPoints: [join(here, '../dist/index.js')],
  bundle: true,
  format: 'esm',
  minify: true,
  legalComments: 'none',
  write: false,
  banner: { js: '// switchboard-client, bundled from clients/js by `npm run demo` (scripts/bundle-demo.mjs); do not edit.' },
});
const bundled = result.outputFiles[0].text;
if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = readFileSync(target, 'utf8');
  } catch {
    // missing: reported below
  }
  if (current !== bundled) {
    console.error(`${target} is not the build of clients/js/src: run \`npm run build && npm run demo\` in clients/js and commit it`);
    process.exit(1);
  }
  console.log('demo/switchboard.js matches a fresh build of clients/js/src');
} else {
  writeFileSync(target, bundled);
  console.log(`wrote ${target} (${bundled.length} bytes)`);
}
