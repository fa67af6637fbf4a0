// Bundles web/src/*.js into signaling/static/vendor/ with the exact versions
// of package-lock.json named in each file's first line. The output is
// committed (tests/test_web_assets.py checks it names the locked versions), so
// neither `pip install` nor `vilokanam dev` needs Node for the web pages.
import { readFileSync } from "node:fs";
import { build } from "esbuild";

const lock = JSON.parse(readFileSync(new URL("./package-lock.json", import.meta.url)));
const version = (name) => lock.packages[`node_modules/${name}`].version;
const outdir = new URL("../signaling/static/vendor/", import.meta.url).pathname;

await build({
  entryPoints: [new URL("./src/polkadot-api.js", import.meta.url).pathname],
  outfile: `${outdir}polkadot-api.js`,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  banner: {
    js: `/* @polkadot/api ${version("@polkadot/api")} (Apache-2.0), bundled by esbuild ` +
        `${version("esbuild")} from web/src/polkadot-api.js: cd web && npm ci --ignore-scripts ` +
        "&& npm run build */",
  },
});
