// What every page shares: its configuration (#vk-config, rendered by the
// server), the HTTP API client, error texts, the signed-in account, and the
// helpers that put errors next to form fields. No page renders another user's
// data as HTML: everything goes in through textContent.

export const config = JSON.parse(document.getElementById("vk-config").textContent);
export const byId = (id) => document.getElementById(id);

// window.vilokanam = {pc, state, config}: browser tests read getStats() and state.
export const state = {
  page: document.body.dataset.page,
  phase: "idle",   // idle, connecting, negotiating, publishing/watching, live, ended, left, error
  connection: "new",
  viewerCount: 0,
  sessionId: null,
  error: null,     // {code, message} of the last error shown
};
export const vilokanam = { pc: null, state, config };
window.vilokanam = vilokanam;

export class AppError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

// What to tell a person for each error code (signaling/protocol.py's ErrorCode,
// the API's and the page's own); a code not listed shows the server's message.
const ERROR_TEXT = {
  unauthorized: {
    publish: "That stream key was refused.",
    watch: "Your viewer token was refused. Sign in again.",
    default: "Please sign in again.",
  },
  stream_not_found: "This stream does not exist.",
  stream_not_live: "This stream is not live right now. Try again when it starts.",
  already_live: "Someone is already publishing to this stream.",
  insufficient_funds: "Your balance is too low to watch. Deposit tokens in your wallet, then try again.",
  no_capacity: "The server is full right now. Try again in a moment.",
  sfu_unavailable: "The media server is unavailable. Try again in a moment.",
  worker_draining: "The media server is restarting. Reconnect to continue.",
  no_supported_codec: "Your browser offered no codec the server forwards (VP8/H.264, Opus).",
  too_many_tracks: "Only one video and one audio track can be published.",
  bad_sdp: "The server could not use this browser's connection offer.",
  rate_limited: "Too many attempts. Wait a moment and try again.",
  media_denied: "The camera or microphone could not be opened.",
  missing_key: "Enter the stream key first.",
  connection_failed: "Could not connect to the server.",
  connection_lost: "The connection to the server was lost.",
  network_error: "The server could not be reached. Check your connection and try again.",
  protocol_mismatch: "The server speaks another protocol version. Reload the page.",
  no_wallet: "No Polkadot wallet extension found. Install polkadot{.js} (or a compatible " +
    "wallet), allow this site, and reload the page.",
  no_wallet_accounts: "The wallet shares no Polkadot (sr25519 or ed25519) account with this " +
    "site. Add one, or allow one for this site, in the extension.",
  wallet_denied: "The wallet did not allow this site.",
  wallet_cancelled: "The wallet did not sign.",
  wallet_account_missing: "Your wallet does not hold the account you are signed in with.",
  challenge_invalid: "The login message expired or was already used. Log in again.",
  bad_signature: "The wallet's signature does not match the account. Log in again.",
  invalid_account: "That is not a Polkadot account address.",
  no_escrow: "This server has no escrow account configured: deposits are not possible.",
  chain_error: "The chain refused the transfer.",
  chain_unreachable: "The chain does not answer. Try again in a moment.",
  // Signed delivery receipts (receipts.js).
  receipts_required: "This stream is watched only with a wallet that signs delivery " +
    "receipts. Install polkadot{.js} (or a compatible wallet) and allow this site.",
  delegation_refused: "The wallet's delegation to this page was refused.",
  receipt_refused: "A delivery receipt was refused.",
  receipts_stopped: "No signed receipt covered the seconds watched, so the stream stopped.",
};

export function errorText(code, message) {
  const text = ERROR_TEXT[code];
  if (text && typeof text === "object") return text[state.page] || text.default;
  return text || message || code;
}

// Show an error in a box (role=alert): the friendly text, the code in data-code.
export function showErrorIn(box, code, message) {
  if (!box) return;
  box.dataset.code = code;
  box.textContent = errorText(code, message);
}

export function clearBox(box) {
  if (!box) return;
  delete box.dataset.code;
  box.textContent = "";
}

// Every UI callback goes through here: an error is shown in `box` (default
// #error), never thrown into the page as an unhandled rejection.
export function guarded(action, box = () => byId("error")) {
  return (event) => {
    if (event && event.type === "submit") event.preventDefault();
    Promise.resolve()
      .then(() => action(event))
      .catch((err) => {
        state.error = { code: err.code || "client_error", message: err.message || "" };
        showErrorIn(typeof box === "function" ? box() : box, state.error.code, err.message);
      });
  };
}

// -- forms: the server's message next to the field it is about -----------------

// API error codes -> the field (input name) they are about.
const ERROR_FIELD = {
  invalid_title: "title",
  invalid_price: "price_per_second",
  invalid_amount: "amount",
  invalid_account: "account",
  empty_upload: "file",
  payload_too_large: "file",
  upload_length_required: "file",
};

export function clearFormErrors(form) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// The server's own message (it names the limit) next to the field, or under
// the form when it is about no field. `fields` adds a form's own codes
// (e.g. a tip's insufficient_funds is about its amount).
export function showFormError(form, err, fields = {}) {
  const field = fields[err.code] || ERROR_FIELD[err.code] || "";
  let slot = form.querySelector(`[data-error-for="${field}"]`);
  if (!slot) slot = form.querySelector('[data-error-for=""]');
  const input = field ? form.querySelector(`[name="${field}"]`) : null;
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
  slot.dataset.code = err.code || "client_error";
  slot.dataset.detail = err.message || "";  // the underlying reason, for support and tests
  slot.textContent = field ? (err.message || errorText(err.code)) : errorText(err.code, err.message);
}

// A form's submit handler whose errors land next to its fields.
export function formHandler(form, action, fields = {}) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearFormErrors(form);
    Promise.resolve()
      .then(() => action(new FormData(form)))
      .catch((err) => showFormError(form, err, fields));
  });
}

// -- the HTTP API ------------------------------------------------------------------

export async function api(method, path, { body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new AppError("network_error", err.message);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    throw new AppError(error.code || "http_error", error.message || response.statusText,
                       response.status);
  }
  return data;
}

// -- who is signed in --------------------------------------------------------------

// The token lives in sessionStorage: this tab only, gone when it closes; every
// page of the tab shares it.
const VIEWER_STORAGE_KEY = "vilokanam.viewer";
export const viewer = {
  load() {
    try {
      return JSON.parse(sessionStorage.getItem(VIEWER_STORAGE_KEY)) || null;
    } catch {
      return null;
    }
  },
  save(token, account) {
    sessionStorage.setItem(VIEWER_STORAGE_KEY, JSON.stringify({ token, account }));
    document.dispatchEvent(new CustomEvent("vk:signed-in"));
  },
  forget() {
    sessionStorage.removeItem(VIEWER_STORAGE_KEY);
    document.dispatchEvent(new CustomEvent("vk:signed-out"));
  },
};

// An API call as the signed-in user; a refused token signs them out.
export async function userApi(method, path, options = {}) {
  const current = viewer.load();
  if (!current) throw new AppError("unauthorized", "not signed in");
  try {
    return await api(method, path, { ...options, token: current.token });
  } catch (err) {
    if (err.status === 401) viewer.forget();
    throw err;
  }
}

// -- rendering text ------------------------------------------------------------------

export function amountText(amount) {
  return `${amount} ${config.tokenSymbol || ""}`.trim();
}

export function timeText(iso) {
  if (!iso) return "—";
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? iso : when.toLocaleString();
}

// A table row from plain values (text) or nodes (links, buttons built by the caller).
export function tableRow(cells) {
  const row = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "—" : String(cell);
    row.append(td);
  }
  return row;
}

export function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

// Poll `action` every `ms` while the page is open; a failed round is shown by
// the action itself and the next round still runs.
export function every(ms, action) {
  const run = () => Promise.resolve().then(action).catch(() => {});
  run();
  return setInterval(run, ms);
}

// Copy buttons: <button data-copy="input-id">.
export function wireCopyButtons() {
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", () => {
      const input = byId(button.dataset.copy);
      input.select();
      const done = () => { button.textContent = "Copied"; };
      if (navigator.clipboard) navigator.clipboard.writeText(input.value).then(done, () => {});
      else done();
    });
  }
}
