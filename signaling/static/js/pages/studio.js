// The studio: create a stream (then its page shows the key once), the
// creator's streams, earnings and on-chain payouts.

import {
  amountText, byId, formHandler, link, showErrorIn, tableRow, timeText, userApi, viewer,
} from "../core.js";
import { NEW_KEY_PREFIX } from "./publish.js";

function fillTable(table, empty, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows);
  table.hidden = rows.length === 0;
  empty.hidden = rows.length !== 0;
}

async function loadStreams() {
  const { streams } = await userApi("GET", "/api/me/streams");
  fillTable(byId("my-streams"), byId("no-my-streams"), streams.map((s) => tableRow([
    link(`/publish/${s.id}`, s.title), s.status, s.viewer_count, s.total_ticks,
    amountText(s.price_per_second),
    s.status === "live" ? link(`/watch/${s.id}`, "Watch") : "—",
  ])));
}

async function loadMoney() {
  const earnings = await userApi("GET", "/api/me/earnings");
  byId("total-earnings").textContent = amountText(earnings.total_earnings);
  byId("pending-payout").textContent = amountText(earnings.pending_payout);
  byId("last-payout").textContent = timeText(earnings.last_payout_at);
  const { payouts } = await userApi("GET", "/api/me/payouts");
  fillTable(byId("payouts"), byId("no-payouts"), payouts.map((p) => {
    const hash = document.createElement("code");
    hash.className = "mono";
    hash.textContent = p.extrinsic_hash || "—";
    return tableRow([timeText(p.finalized_at || p.created_at), amountText(p.amount), p.status,
                     hash, p.block_number]);
  }));
}

export function studioPage() {
  const form = byId("create-form");

  async function render() {
    const signedIn = Boolean(viewer.load());
    byId("sign-in-needed").hidden = signedIn;
    byId("studio").hidden = !signedIn;
    if (signedIn) await Promise.all([loadStreams(), loadMoney()]);
  }

  formHandler(form, async (data) => {
    const body = { title: data.get("title") };
    const price = String(data.get("price_per_second") || "").trim();
    if (price) body.price_per_second = price;
    const created = await userApi("POST", "/api/streams", { body });
    sessionStorage.setItem(NEW_KEY_PREFIX + created.id, created.stream_key);
    location.assign(`/publish/${created.id}`);
  });
  const rerender = () => render().catch((err) => showErrorIn(byId("error"), err.code, err.message));
  document.addEventListener("vk:signed-in", rerender);
  document.addEventListener("vk:signed-out", rerender);
  rerender();
}
