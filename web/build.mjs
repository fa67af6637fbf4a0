// Bundles web/src/*.js into signaling/static/vendor/ with the exact versions
// of package-lock.json named in each file's first line. The output is
// committed (tests/test_web_assets.py checks it names the locked versions), so
// neither `pip install` nor `vilokanam dev` needs Node for the web pages.
import { readFileSync } from "node:fs";
import { build } from "esbuild";

const lock = JSON.parse(readFileSync(new URL("./package-lock.json", import.meta.url)));
const version = (name) => lock.packages[`node_modules/${name}`].version;
// VILOKANAM_WEB_OUTDIR: build elsewhere (the test that the committed bundle is this build).
const outdir = process.env.VILOKANAM_WEB_OUTDIR
  ? `${process.env.VILOKANAM_WEB_OUTDIR.replace(/\/$/, "")}/`
  : new URL("../signaling/static/vendor/", import.meta.url).pathname;

// No WebAssembly under the strict CSP (script-src 'self', no
// 'wasm-unsafe-eval'): @polkadot/wasm-crypto-init's entry becomes its asm.js
// variant, the same crypto compiled to plain JavaScript. (Without any of it,
// @polkadot/util-crypto's JavaScript fallbacks leave ApiPromise.create hanging.)
const asmCrypto = {
  name: "asm-crypto",
  setup(builder) {
    const asm = new URL("./node_modules/@polkadot/wasm-crypto-init/asm.js", import.meta.url);
    builder.onResolve({ filter: /^@polkadot\/wasm-crypto-init$/ }, () => ({ path: asm.pathname }));
  },
};

await build({
  entryPoints: [new URL("./src/polkadot-api.js", import.meta.url).pathname],
  outfile: `${outdir}polkadot-api.js`,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  plugins: [asmCrypto],
  banner: {
    js: `/* @polkadot/api ${version("@polkadot/api")} (Apache-2.0), bundled by esbuild ` +
        `${version("esbuild")} from web/src/polkadot-api.js (crypto as asm.js, no WebAssembly: ` +
        "strict CSP); cd web && npm ci --ignore-scripts && npm run build */",
  },
});
