// Signing in, from the header on every page: a Polkadot wallet extension signs
// the server's one-time challenge (POST /api/auth/challenge, /api/auth/verify),
// or, in dev mode, a dev account gets a token without a signature. The header
// shows who is signed in and their live balance.

import {
  AppError, api, amountText, byId, clearBox, config, guarded, userApi, viewer,
} from "./core.js";

const APP_NAME = "Vilokanam-view";  // how the wallet extension names this site
// What the extension signs with; ecdsa/ethereum keys give signatures the server refuses.
const WALLET_KEY_TYPES = new Set(["sr25519", "ed25519"]);
const BALANCE_REFRESH_MS = 10000;

export function hexOfText(text) {
  const bytes = new TextEncoder().encode(text);
  return `0x${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

// A Polkadot wallet extension (window.injectedWeb3, polkadot{.js} first): the
// accounts it shares with this site and its signer. The wallet page reuses it.
export async function connectWallet() {
  const wallets = window.injectedWeb3 || {};
  const name = wallets["polkadot-js"] ? "polkadot-js" : Object.keys(wallets)[0];
  if (!name) throw new AppError("no_wallet", "no window.injectedWeb3");
  let injected;
  try {
    injected = await wallets[name].enable(APP_NAME);
  } catch (err) {
    throw new AppError("wallet_denied", err.message);
  }
  const accounts = (await injected.accounts.get())
    .filter((account) => !account.type || WALLET_KEY_TYPES.has(account.type));
  if (!accounts.length) throw new AppError("no_wallet_accounts", "no usable account");
  return { signer: injected.signer, accounts };
}

// Sign the server's challenge; the extension wraps it in <Bytes>…</Bytes>,
// which the server accepts (a signed message can never be a transaction).
async function walletLogin(signer, address) {
  const { challenge } = await api("POST", "/api/auth/challenge", { body: { account: address } });
  let signed;
  try {
    signed = await signer.signRaw({ address, data: hexOfText(challenge), type: "bytes" });
  } catch (err) {
    throw new AppError("wallet_cancelled", err.message);
  }
  return api("POST", "/api/auth/verify", { body: { account: address, signature: signed.signature } });
}

// Moderation in the navigation, for moderators only, with the number of open
// reports (GET /api/me says both; the page itself knows nobody).
function showModeration(me) {
  byId("nav-moderation").hidden = !(me && me.is_moderator);
  const count = me && me.is_moderator ? me.open_reports : null;
  byId("nav-moderation-open").textContent = count ? String(count) : "";
  byId("nav-moderation-count").hidden = !count;
}

// The header's live balance; pages that know better (a tick) call it too.
export async function refreshBalance() {
  const box = byId("header-balance-box");
  if (!viewer.load()) {
    box.hidden = true;
    showModeration(null);
    return null;
  }
  const me = await userApi("GET", "/api/me");
  byId("header-balance").textContent = amountText(me.balance);
  box.hidden = false;
  showModeration(me);
  document.dispatchEvent(new CustomEvent("vk:me", { detail: me }));
  return me;
}

export function openSignIn() {
  const dialog = byId("sign-in-dialog");
  if (!dialog.open) dialog.showModal();
}

export function setUpSignIn() {
  const dialog = byId("sign-in-dialog");
  const errorBox = byId("sign-in-error");
  const walletAccount = byId("wallet-account");
  let wallet = null;  // {signer, accounts} once the extension let us in

  function render() {
    const current = viewer.load();
    byId("account").textContent = current ? current.account : "nobody yet";
    byId("account").title = current ? current.account : "";
    byId("sign-out").hidden = !current;
    byId("sign-in-open").hidden = Boolean(current);
    const several = Boolean(wallet) && wallet.accounts.length > 1;
    walletAccount.hidden = !several;
    byId("wallet-account-label").hidden = !several;
    byId("wallet-sign-in").textContent = several ? "Sign in as this account" : "Log in with wallet";
  }

  function signedIn({ token, account }) {
    clearBox(errorBox);
    viewer.save(token, account);
    if (dialog.open) dialog.close();
  }

  async function walletSignIn() {
    if (!wallet) {
      wallet = await connectWallet();
      for (const { address, name } of wallet.accounts) {
        walletAccount.add(new Option(`${name || "Account"} (${address.slice(0, 8)}…)`, address));
      }
      // Several accounts: let the person pick one, then sign on the next click.
      if (wallet.accounts.length > 1) {
        render();
        walletAccount.focus();
        return;
      }
    }
    signedIn(await walletLogin(wallet.signer, walletAccount.value));
  }

  async function devSignIn() {
    signedIn(await api("POST", "/api/dev/token", { body: { account: byId("dev-account").value } }));
  }

  async function tokenSignIn() {
    const token = byId("token").value.trim();
    const me = await api("GET", "/api/me", { token });  // checks the token, names its account
    byId("token").value = "";
    signedIn({ token, account: me.account });
  }

  byId("wallet-form").addEventListener("submit", guarded(walletSignIn, errorBox));
  const devForm = byId("dev-token-form");
  if (devForm) {
    for (const { name, account } of config.devAccounts) {
      byId("dev-account").add(new Option(`${name} (${account.slice(0, 8)}…)`, account));
    }
    devForm.addEventListener("submit", guarded(devSignIn, errorBox));
  }
  const tokenForm = byId("token-form");
  if (tokenForm) tokenForm.addEventListener("submit", guarded(tokenSignIn, errorBox));
  byId("sign-in-open").addEventListener("click", openSignIn);
  for (const button of document.querySelectorAll("[data-open-sign-in]")) {
    button.addEventListener("click", openSignIn);
  }
  byId("sign-out").addEventListener("click", () => viewer.forget());

  const changed = () => {
    render();
    refreshBalance().catch(() => {});
  };
  document.addEventListener("vk:signed-in", changed);
  document.addEventListener("vk:signed-out", changed);
  render();
  setInterval(() => refreshBalance().catch(() => {}), BALANCE_REFRESH_MS);
  refreshBalance().catch(() => {});
}
