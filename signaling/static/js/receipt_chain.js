// What the chain says about a settlement batch, read in the browser with the
// bundled @polkadot/api (standard RPCs only, as vilokanam/receipt_check.py
// reads it): is the block the finalized chain's block of that number, what is
// the extrinsic at the receipt's index (its hash, a Utility.batch_all or not,
// its System.remark texts) and did it succeed. receipt_verify.js judges it.

import { AppError } from "./core.js";

const CONNECT_TIMEOUT_MS = 15000;

function within(promise, ms, onTimeout) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

// An ApiPromise on `url`, or AppError("chain_unreachable") soon: one attempt,
// no reconnect loop (a dead node must be reported, not waited for).
export async function connectChain(url) {
  const { ApiPromise, WsProvider } = await import("/static/vendor/polkadot-api.js");
  const unreachable = () => new AppError("chain_unreachable", `the chain at ${url} does not answer`);
  const provider = new WsProvider(url, 0);
  const failed = new Promise((_, reject) => provider.on("error", () => reject(unreachable())));
  failed.catch(() => {});
  try {
    await provider.connect();
    await within(Promise.race([provider.isReady, failed]), CONNECT_TIMEOUT_MS, unreachable);
    return await within(Promise.race([ApiPromise.create({ provider, noInitWarn: true }), failed]),
                        CONNECT_TIMEOUT_MS, unreachable);
  } catch (err) {
    await provider.disconnect().catch(() => {});
    throw err instanceof AppError ? err : unreachable();
  }
}

function remarkText(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes.toU8a(true));
  } catch {
    return bytes.toHex();
  }
}

// readChain for receipt_verify.verifyReceipt.
export function chainReader(chain) {
  return async (batch) => {
    const genesisHash = chain.genesisHash.toHex();
    const { block_hash: blockHash, block_number: number, extrinsic_index: index } = batch;
    const nothing = { finalized: false, extrinsicHash: null, isBatchAll: false, remarks: [],
                      success: false, genesisHash };
    if (!Number.isInteger(number) || typeof blockHash !== "string" || !Number.isInteger(index)) {
      return nothing;
    }
    const head = await chain.rpc.chain.getHeader(await chain.rpc.chain.getFinalizedHead());
    const finalized = number <= head.number.toNumber() &&
      (await chain.rpc.chain.getBlockHash(number)).toHex() === blockHash;
    if (!finalized) return nothing;
    const { block } = await chain.rpc.chain.getBlock(blockHash);
    if (index < 0 || index >= block.extrinsics.length) return { ...nothing, finalized };
    const extrinsic = block.extrinsics[index];
    const call = extrinsic.method;
    const isBatchAll = call.section === "utility" && call.method === "batchAll";
    const remarks = isBatchAll
      ? call.args[0].filter((inner) => inner.section === "system" && inner.method === "remark")
        .map((inner) => remarkText(inner.args[0]))
      : [];
    const events = await (await chain.at(blockHash)).query.system.events();
    const success = events.some(({ phase, event }) => phase.isApplyExtrinsic &&
      phase.asApplyExtrinsic.toNumber() === index && chain.events.system.ExtrinsicSuccess.is(event));
    return { finalized, extrinsicHash: extrinsic.hash.toHex(), isBatchAll, remarks, success,
             genesisHash };
  };
}
