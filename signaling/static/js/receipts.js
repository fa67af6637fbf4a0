// Viewer-signed delivery receipts (docs/protocol.md, docs/metering.md).
//
// At watch, the wallet signs once a delegation to an Ed25519 key made here
// (WebCrypto: no library), for this stream, capped at its price, for a few
// hours. Every 10 s the page signs with that key a cumulative receipt: the
// seconds in which its peer connection really received media (getStats
// bytesReceived grew) and their exact amount. No wallet: the server's meter
// bills the session, as for any player that cannot sign.

import { AppError, byId, config, vilokanam } from "./core.js";
import { connectWallet, hexOfText } from "./signin.js";

const RECEIPT_EVERY_MS = 10000;
const MEASURE_EVERY_MS = 1000;
const DELEGATION_S = 6 * 3600;

function bytesHex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

// Exact money: a decimal string of tokens <-> integer planck (BigInt).
export function toPlanck(amount, decimals) {
  const [whole, fraction = ""] = String(amount).split(".");
  return BigInt(whole + fraction.padEnd(decimals, "0").slice(0, decimals));
}

export function fromPlanck(planck, decimals) {
  const digits = planck.toString().padStart(decimals + 1, "0");
  const whole = digits.slice(0, digits.length - decimals);
  const fraction = digits.slice(digits.length - decimals).replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : whole;
}

// #signed-seconds: the seconds the server accepted as signed by this page.
export function setSigned(seconds) {
  const shown = byId("signed-seconds");
  if (!shown) return;
  shown.dataset.vkBilling = "signed";
  shown.textContent = `${seconds} s`;
}

// The delegation for `account` to watch `streamId` at the price `pricing()`
// resolves to (asked only when a wallet can sign), or null when no wallet holds that account (or this browser has no Ed25519 in WebCrypto).
export async function delegate(account, pricing, streamId) {
  if (!window.injectedWeb3 || !(window.crypto && crypto.subtle)) return null;
  const wallet = await connectWallet();
  if (!wallet.accounts.some((a) => a.address === account)) return null;
  const price = await pricing();  // only for a wallet that will sign
  const key = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const publicKey = bytesHex(await crypto.subtle.exportKey("raw", key.publicKey));
  const expiresAt = Math.floor(Date.now() / 1000) + DELEGATION_S;
  const text = `vilokanam:delegation:v1:${account}:${streamId}:${publicKey}:` +
    `${price}:${expiresAt}`;
  let signed;
  try {
    signed = await wallet.signer.signRaw({ address: account, data: hexOfText(text), type: "bytes" });
  } catch (err) {
    throw new AppError("wallet_cancelled", err.message);
  }
  return {
    key, price,
    wire: { session_key: `0x${publicKey}`, price_cap: price, expires_at: expiresAt,
            signature: signed.signature },
  };
}

export class DeliveryReceipts {
  constructor(session, delegation) {
    this.session = session;
    this.delegation = delegation;
    this.viewerSessionId = null;
    this.received = 0;      // seconds in which media arrived
    this.signed = 0;        // the seconds of the last receipt sent
    this.lastBytes = 0;
    this.timers = [];
    vilokanam.receipts = this;  // browser tests read it
  }

  start(viewerSessionId) {
    this.viewerSessionId = viewerSessionId;
    setSigned(0);
    this.timers.push(setInterval(() => this.measure().catch(() => {}), MEASURE_EVERY_MS));
    this.timers.push(setInterval(() => this.flush().catch(() => {}), RECEIPT_EVERY_MS));
  }

  async measure() {
    const stats = await this.session.pc.getStats();
    let bytes = 0;
    stats.forEach((report) => {
      if (report.type === "inbound-rtp") bytes += report.bytesReceived || 0;
    });
    if (bytes > this.lastBytes) this.received += 1;
    this.lastBytes = bytes;
  }

  async flush() {
    const seconds = this.received;
    if (!this.viewerSessionId || seconds <= this.signed) return;  // nothing new to sign
    const decimals = config.tokenDecimals;
    const amount = fromPlanck(BigInt(seconds) * toPlanck(this.delegation.price, decimals),
                              decimals);
    const text = `vilokanam:receipt:v1:${this.viewerSessionId}:${seconds}:${amount}`;
    const signature = await crypto.subtle.sign(
      { name: "Ed25519" }, this.delegation.key.privateKey, new TextEncoder().encode(text));
    this.signed = seconds;
    this.session.send({ type: "receipt", viewer_session_id: this.viewerSessionId, seconds,
                        amount, signature: `0x${bytesHex(signature)}` });
  }

  stop() {
    this.timers.splice(0).forEach(clearInterval);
  }
}
