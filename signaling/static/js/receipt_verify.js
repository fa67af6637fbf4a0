// Checking a receipt (GET /api/receipts/...) in the browser, as
// vilokanam/receipt_check.py does on the command line: pure functions over the
// receipt and what the chain says (readChain is passed in), hashing with
// WebCrypto SHA-256 exactly as vilokanam/receipts.py documents. No DOM, no
// network here: tests/receipt_vectors.mjs runs this module in Node against
// vectors made by Python (tests/receipt_vectors.json).
//
//   leaf(line)    = sha256(0x00 || utf8(line))           (RFC 9162 §2.1.1)
//   node(l, r)    = sha256(0x01 || l || r)
//   v2 remark     = "vilokanam:settlement:v2:" + root hex
//   v1 remark     = "vilokanam:settlement:v1:" + sha256(sorted lines joined by "\n") hex

export const MERKLE_V2 = "merkle-v2";
export const DIGEST_V1 = "digest-v1";
export const MERKLE_REMARK_PREFIX = "vilokanam:settlement:v2:";
export const REMARK_PREFIX = "vilokanam:settlement:v1:";

const utf8 = new TextEncoder();
const HEX = /^(?:[0-9a-f]{2})*$/;
const DECIMAL = /^(\d+)(?:\.(\d+))?$/;

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Lowercase hex (an optional 0x) -> bytes, or null when it is not hex.
export function fromHex(text) {
  const digits = String(text).replace(/^0x/, "");
  if (!HEX.test(digits)) return null;
  return Uint8Array.from(digits.match(/../g) || [], (pair) => parseInt(pair, 16));
}

async function sha256(...parts) {
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export function leafHash(line) {
  return sha256(Uint8Array.of(0), utf8.encode(line));
}

export function nodeHash(left, right) {
  return sha256(Uint8Array.of(1), left, right);
}

// Python's sorted() orders by code point; the lines are ASCII, where
// JavaScript's default sort (UTF-16 units) is the same order.
export async function batchDigest(lines) {
  return toHex(await sha256(utf8.encode([...lines].sort().join("\n"))));
}

// The root of the tree of `lines` (sorted), as billing computes it: each level
// pairs from the left and an odd last node is carried up.
export async function merkleRoot(lines) {
  let level = await Promise.all([...lines].sort().map(leafHash));
  while (level.length > 1) {
    const paired = [];
    for (let i = 0; i + 1 < level.length; i += 2) paired.push(await nodeHash(level[i], level[i + 1]));
    if (level.length % 2) paired.push(level[level.length - 1]);
    level = paired;
  }
  return toHex(level[0]);
}

// RFC 9162 §2.1.3.2: does `proof` put `line` at `index` of a tree of `count`
// leaves whose root is `root`? Malformed input is simply false.
export async function verifyInclusion(line, index, count, proof, root) {
  const path = proof.map(fromHex);
  const wanted = fromHex(root);
  if (!Number.isInteger(index) || !Number.isInteger(count) || !(index >= 0 && index < count)) {
    return false;
  }
  if (wanted === null || path.some((p) => p === null || p.length !== 32)) return false;
  let fn = index;
  let sn = count - 1;
  let r = await leafHash(line);
  for (const p of path) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && toHex(r) === toHex(wanted);
}

// An amount as the lines write it (vilokanam.money.format_amount: plain
// decimal, no trailing zeros), or null when it is not a plain decimal.
export function formatAmount(value) {
  const match = DECIMAL.exec(String(value));
  if (!match) return null;
  const whole = match[1].replace(/^0+(?=\d)/, "");
  const fraction = (match[2] || "").replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : whole;
}

// Exact sum of plain decimals (BigInt, never a float), formatted as above.
export function sumAmounts(values) {
  const scale = Math.max(0, ...values.map((v) => (String(v).split(".")[1] || "").length));
  let total = 0n;
  for (const value of values) {
    const [whole, fraction = ""] = String(value).split(".");
    total += BigInt(whole + fraction.padEnd(scale, "0"));
  }
  const digits = total.toString().padStart(scale + 1, "0");
  return formatAmount(scale ? `${digits.slice(0, -scale)}.${digits.slice(-scale)}` : digits);
}

// The line this receipt's charge must have in a batch of `amount`.
export function lineOf(receipt, amount) {
  if (typeof receipt.stream_viewer_id === "string") return `${receipt.stream_viewer_id}:${amount}`;
  return `${receipt.payment_type}:${receipt.payment_id}:${amount}`;
}

// Offline: the batch's line is this receipt's charge and leads to its
// commitment. A list of problems (empty: it holds).
export async function checkArithmetic(receipt, batch) {
  const where = `settlement ${batch.settlement_id}`;
  const amount = formatAmount(batch.amount);
  if (amount === null) return [`${where}: amount ${JSON.stringify(batch.amount)} is not a decimal`];
  const line = batch.line;
  if (line !== lineOf(receipt, amount)) {
    return [`${where}: line ${JSON.stringify(line)} is not this receipt's charge of ${amount}`];
  }
  if (batch.commitment === MERKLE_V2) {
    const { root, leaf_index: index, leaf_count: count, proof } = batch;
    if (typeof root !== "string" || !Number.isInteger(index) || !Number.isInteger(count) ||
        !Array.isArray(proof) || !proof.every((p) => typeof p === "string")) {
      return [`${where}: root, leaf_index, leaf_count or proof missing`];
    }
    if (!(await verifyInclusion(line, index, count, proof, root))) {
      return [`${where}: root mismatch: the proof does not lead from the line to root ${root}`];
    }
    if (batch.remark !== MERKLE_REMARK_PREFIX + root) {
      return [`${where}: remark ${JSON.stringify(batch.remark)} does not carry root ${root}`];
    }
    return [];
  }
  if (batch.commitment === DIGEST_V1 || batch.commitment === null || batch.commitment === undefined) {
    const { lines, digest } = batch;
    if (!Array.isArray(lines) || !lines.every((l) => typeof l === "string")) {
      return [`${where}: lines missing`];
    }
    if (!lines.includes(line)) return [`${where}: the line is not among the batch's lines`];
    if ((await batchDigest(lines)) !== digest) {
      return [`${where}: digest mismatch: the lines do not hash to digest ${digest}`];
    }
    if (batch.remark !== REMARK_PREFIX + digest) {
      return [`${where}: remark ${JSON.stringify(batch.remark)} does not carry digest ${digest}`];
    }
    return [];
  }
  return [`${where}: unknown commitment ${JSON.stringify(batch.commitment)}`];
}

// What the chain says about one batch's extrinsic (readChain's answer):
// {finalized, extrinsicHash (null: no such index), isBatchAll, remarks, success, genesisHash}.
export function checkOnChain(batch, chain) {
  const where = `settlement ${batch.settlement_id}`;
  if (batch.genesis_hash && batch.genesis_hash !== chain.genesisHash) {
    return [`${where}: the node serves another chain (genesis ${chain.genesisHash})`];
  }
  if (!chain.finalized) {
    return [`${where}: block ${batch.block_hash} is not the finalized block ` +
            `${batch.block_number} of the node's chain`];
  }
  if (chain.extrinsicHash !== batch.extrinsic_hash) {
    return [`${where}: remark not found: the extrinsic at index ${batch.extrinsic_index} is ` +
            `${chain.extrinsicHash}, not ${batch.extrinsic_hash}`];
  }
  if (!chain.isBatchAll) return [`${where}: remark not found: the extrinsic is not a Utility.batch_all`];
  if (!chain.success) return [`${where}: the batch did not succeed on chain`];
  if (chain.remarks.length !== 1 || chain.remarks[0] !== batch.remark) {
    return [`${where}: remark not found: the batch's remark on chain is ` +
            `${JSON.stringify(chain.remarks)}`];
  }
  return [];
}

const SUMMARY = ["line", "remark", "extrinsic_hash", "block_hash", "root", "proof"];

// The whole receipt: {holds, checked: [settlement ids], problems: [text]}.
// readChain(batch) resolves with checkOnChain's input, or rejects (a chain
// that does not answer is the caller's to report).
export async function verifyReceipt(receipt, readChain) {
  const checked = [];
  const problems = [];
  const settlements = Array.isArray(receipt.settlements) ? receipt.settlements : [];
  const completed = settlements.filter((b) => b && b.status === "completed");
  if (completed.length === 0) {
    return { holds: false, checked, problems: ["no completed settlement covers this charge yet"] };
  }
  for (const batch of completed) {
    let found = await checkArithmetic(receipt, batch);
    if (found.length === 0) found = checkOnChain(batch, await readChain(batch));
    if (found.length) problems.push(...found);
    else checked.push(String(batch.settlement_id));
  }
  const latest = completed[completed.length - 1];
  for (const key of SUMMARY) {
    if (key in receipt && JSON.stringify(receipt[key]) !== JSON.stringify(latest[key])) {
      problems.push(`the receipt's ${key} is not its latest batch's`);
    }
  }
  const amounts = completed.map((b) => formatAmount(b.amount));
  if (amounts.includes(null)) {
    problems.push("an amount is not a decimal");
  } else if (receipt.settled !== undefined && receipt.settled !== null) {
    const total = sumAmounts(amounts);
    if (formatAmount(receipt.settled) !== total) {
      problems.push(`settled ${receipt.settled} is not the sum ${total} of its batches`);
    }
  }
  return { holds: checked.length > 0 && problems.length === 0, checked, problems };
}
