// The wallet: balance, a deposit to the escrow signed by the wallet extension
// (a Balances.transfer_keep_alive built with @polkadot/api, bundled in
// /static/vendor/ and loaded only when a deposit starts), viewing sessions and
// their receipts.

import {
  AppError, amountText, api, byId, formHandler, showErrorIn, tableRow, timeText, userApi,
  viewer,
} from "../core.js";
import { chainReader, connectChain } from "../receipt_chain.js";
import { verifyReceipt } from "../receipt_verify.js";
import { connectWallet, refreshBalance } from "../signin.js";

const CREDIT_WAIT_MS = 120000;
const CREDIT_POLL_MS = 2000;
const AMOUNT = /^\d+(\.\d+)?$/;

// "1.5" tokens -> planck as a BigInt, exactly (never through a float).
export function toPlanck(text, decimals) {
  const amount = String(text || "").trim();
  if (!AMOUNT.test(amount)) {
    throw new AppError("invalid_amount", "amount must be a number of tokens, like 1.5");
  }
  const [whole, fraction = ""] = amount.split(".");
  if (fraction.length > decimals) {
    throw new AppError("invalid_amount", `amount has at most ${decimals} decimals`);
  }
  const planck = BigInt(whole) * 10n ** BigInt(decimals) + BigInt(fraction.padEnd(decimals, "0"));
  if (planck <= 0n) throw new AppError("invalid_amount", "amount must be more than 0");
  return planck;
}

function status(text) {
  byId("deposit-status").textContent = text;
}

// Resolves with the block hash once the transfer is in a block; rejects with
// the chain's error when it failed there.
function sendTransfer(chain, tx, address, signer) {
  return new Promise((resolve, reject) => {
    tx.signAndSend(address, { signer }, ({ status: txStatus, dispatchError }) => {
      if (dispatchError) {
        const reason = dispatchError.isModule
          ? chain.registry.findMetaError(dispatchError.asModule).name : dispatchError.toString();
        reject(new AppError("chain_error", reason));
      } else if (txStatus.isInBlock) {
        resolve(txStatus.asInBlock.toHex());
      } else if (txStatus.isDropped || txStatus.isInvalid || txStatus.isUsurped) {
        reject(new AppError("chain_error", txStatus.type));
      }
    }).catch((err) => reject(new AppError("wallet_cancelled", err.message)));
  });
}

async function deposit(data) {
  const info = await api("GET", "/api/billing/info");
  if (!info.escrow_account || !info.chain_rpc) throw new AppError("no_escrow", "no escrow");
  const planck = toPlanck(data.get("amount"), info.token_decimals);
  const current = viewer.load();
  status("Connecting to your wallet…");
  const wallet = await connectWallet();
  status("Connecting to the chain…");
  const { ApiPromise, WsProvider } = await import("/static/vendor/polkadot-api.js");
  const chain = await ApiPromise.create({ provider: new WsProvider(info.chain_rpc), noInitWarn: true });
  try {
    // The extension may show the account in another SS58 prefix: compare keys.
    const key = (address) => chain.createType("AccountId", address).toHex();
    const mine = wallet.accounts.find((a) => key(a.address) === key(current.account));
    if (!mine) throw new AppError("wallet_account_missing", current.account);
    const before = (await userApi("GET", "/api/me")).balance;
    status("Waiting for your wallet to sign…");
    const tx = chain.tx.balances.transferKeepAlive(info.escrow_account, planck);
    const block = await sendTransfer(chain, tx, mine.address, wallet.signer);
    status(`In block ${block}. Waiting for the deposit to be credited…`);
    const deadline = Date.now() + CREDIT_WAIT_MS;
    while (Date.now() < deadline) {
      const me = await refreshBalance();
      if (me && me.balance !== before) {
        status(`Deposited ${amountText(data.get("amount"))}: your balance is ${amountText(me.balance)}.`);
        byId("balance").textContent = amountText(me.balance);
        return;
      }
      await new Promise((done) => setTimeout(done, CREDIT_POLL_MS));
    }
    status(`The transfer is in block ${block}; the credit has not shown up yet. Check back soon.`);
  } finally {
    await chain.disconnect();
  }
}

function receiptField(list, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
  list.append(dt, dd);
}

// The proof the receipt carries: a v2 batch's Merkle path to the root (no
// other line), a v1 batch's whole list of lines (its digest needs them all).
function proofText(r) {
  if (r.commitment === "merkle-v2") {
    return [`leaf ${r.leaf_index} of ${r.leaf_count}, path to the root:`, ...r.proof].join("\n");
  }
  return (r.lines || []).join("\n") || "not settled yet";
}

async function showReceipt(sessionId, clearVerdict = true) {
  const r = await userApi("GET", `/api/receipts/${encodeURIComponent(sessionId)}`);
  const list = byId("receipt-fields");
  list.replaceChildren();
  for (const [label, value] of [
    ["Session", r.stream_viewer_id], ["Creator", r.creator_account], ["Seconds", r.seconds],
    ["Price per second", amountText(r.price_per_second)], ["Charge", amountText(r.charge)],
    ["Settled", amountText(r.settled)], ["Unsettled", amountText(r.unsettled)],
    ["Status", r.status], ["Extrinsic", r.extrinsic_hash], ["Block", r.block_number],
    ["Block hash", r.block_hash], ["Extrinsic index", r.extrinsic_index],
    ["Your line", r.line], ["Commitment", r.commitment], ["Root", r.root], ["Digest", r.digest],
    ["Remark on chain", r.remark],
    // An old digest batch's algorithm; otherwise the Merkle one new batches use.
    ["Algorithm", r.commitment === "digest-v1" ? r.digest_algorithm : r.proof_algorithm],
  ]) receiptField(list, label, value);
  byId("receipt-lines").textContent = proofText(r);
  if (clearVerdict) showVerdict(null);
  byId("receipt").hidden = false;
  byId("receipt-title").focus();
  return r;
}

// #receipt-verdict: data-verdict is checking, verified, not-verified or
// unreachable; the reasons are listed under it.
function showVerdict(verdict, text = "", reasons = []) {
  const box = byId("receipt-verdict");
  if (verdict) box.dataset.verdict = verdict;
  else delete box.dataset.verdict;
  box.textContent = text;
  const list = byId("receipt-problems");
  list.replaceChildren(...reasons.map((reason) => {
    const item = document.createElement("li");
    item.textContent = reason;
    return item;
  }));
  list.hidden = reasons.length === 0;
}

// Fetch the receipt, recompute its line's hashes here and read the
// settlement's remark from the chain (the node billing/info names): trust
// nothing the platform says that the chain does not confirm.
async function verifyOnChain(sessionId) {
  showVerdict("checking", "Checking the receipt against the chain…");
  const receipt = await showReceipt(sessionId, false);
  const { chain_rpc: url } = await api("GET", "/api/billing/info");
  let chain = null;
  const readChain = async (batch) => {
    try {
      chain = chain || await connectChain(url);
      return await chainReader(chain)(batch);
    } catch (err) {
      throw err.code ? err : new AppError("chain_unreachable", err.message);
    }
  };
  try {
    const result = await verifyReceipt(receipt, readChain);
    if (result.holds) {
      showVerdict("verified", `Verified on chain: your line is in the settlement remark of ` +
        `block ${receipt.block_number} (extrinsic ${receipt.extrinsic_hash}).`);
    } else {
      showVerdict("not-verified", "Not verified:", result.problems);
    }
  } catch (err) {
    if (err.code !== "chain_unreachable") throw err;
    showVerdict("unreachable", "Could not verify: the chain does not answer.", [err.message]);
  } finally {
    if (chain) await chain.disconnect().catch(() => {});
  }
}

function rowButton(text, label, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = text;
  button.setAttribute("aria-label", label);
  button.addEventListener("click", () => action()
    .catch((err) => showErrorIn(byId("error"), err.code, err.message)));
  return button;
}

async function loadSessions() {
  const { sessions } = await userApi("GET", "/api/me/sessions");
  const rows = sessions.map((s) => {
    const actions = document.createElement("span");
    actions.className = "actions";
    actions.append(rowButton("Receipt", `Receipt for ${s.title}`, () => showReceipt(s.id)));
    // A charge with a payment may be settled: the verdict says if not yet.
    if (s.payment_status) {
      actions.append(rowButton("Verify", `Verify the receipt for ${s.title} on chain`,
                               () => verifyOnChain(s.id)));
    }
    return tableRow([s.title, timeText(s.join_time), s.seconds, amountText(s.cost),
                     s.payment_status || (s.active ? "watching" : "pending"), actions]);
  });
  byId("sessions").querySelector("tbody").replaceChildren(...rows);
  byId("sessions").hidden = rows.length === 0;
  byId("no-sessions").hidden = rows.length !== 0;
}

export function walletPage() {
  byId("receipt-title").tabIndex = -1;
  async function render() {
    const signedIn = Boolean(viewer.load());
    byId("sign-in-needed").hidden = signedIn;
    byId("wallet").hidden = !signedIn;
    if (!signedIn) return;
    const info = await api("GET", "/api/billing/info");
    byId("escrow-account").textContent = info.escrow_account || "(none configured)";
    byId("deposit").disabled = !info.escrow_account;
    await loadSessions();
  }
  formHandler(byId("deposit-form"), async (data) => {
    status("");
    try {
      await deposit(data);
    } catch (err) {
      status("");
      throw err;
    }
  });
  document.addEventListener("vk:me", (event) => {
    byId("balance").textContent = amountText(event.detail.balance);
  });
  const rerender = () => render().catch((err) => showErrorIn(byId("error"), err.code, err.message));
  document.addEventListener("vk:signed-in", rerender);
  document.addEventListener("vk:signed-out", rerender);
  rerender();
}
