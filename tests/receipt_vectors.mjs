// Node runs the browser's receipt verifier (signaling/static/js/receipt_verify.js,
// WebCrypto SHA-256) over the vectors Python made (tests/receipt_vectors.json)
// and prints one JSON summary; any disagreement is listed and exits 1.
// Run by tests/test_receipt_verify_js.py: node tests/receipt_vectors.mjs
import { readFileSync } from "node:fs";

// The module as the browser loads it (an ES module with no imports); through
// a data: URL so that every Node takes it as ESM, whatever the folder says.
const source = readFileSync(new URL("../signaling/static/js/receipt_verify.js", import.meta.url));
const {
  batchDigest, checkArithmetic, leafHash, merkleRoot, nodeHash, toHex, verifyInclusion, fromHex,
} = await import(`data:text/javascript;base64,${source.toString("base64")}`);

const vectors = JSON.parse(readFileSync(new URL("./receipt_vectors.json", import.meta.url)));
const wrong = [];
let checked = 0;
const expect = (what, got, wanted) => {
  checked += 1;
  if (got !== wanted) wrong.push({ what, got, wanted });
};

for (const { line, leaf } of vectors.hashes) expect(`leaf ${line}`, toHex(await leafHash(line)), leaf);
for (const { left, right, node } of vectors.nodes) {
  expect(`node ${left} ${right}`, toHex(await nodeHash(fromHex(left), fromHex(right))), node);
}
for (const { lines, root, digest } of vectors.trees) {
  expect(`root of ${lines.length}`, await merkleRoot(lines), root);
  expect(`digest of ${lines.length}`, await batchDigest(lines), digest);
}
for (const { line, index, count, proof, root, holds } of vectors.inclusions) {
  expect(`inclusion ${line} at ${index}/${count} (${proof.length})`,
         await verifyInclusion(line, index, count, proof, root), holds);
}
for (const { name, receipt, batch, problems } of vectors.receipts) {
  expect(name, (await checkArithmetic(receipt, batch)).length, problems);
}
console.log(JSON.stringify({ checked, wrong }));
process.exit(wrong.length ? 1 : 0);
