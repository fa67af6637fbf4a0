// Copies the browser libraries from node_modules into signaling/static, which
// serves them (the pages load nothing from a CDN). Run after `npm ci` here.
import { copyFileSync } from "node:fs";
copyFileSync("node_modules/hls.js/dist/hls.light.min.js", "../signaling/static/hls.light.min.js");
