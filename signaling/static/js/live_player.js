// The live player, shared by the watch page and a live channel's page: Watch
// (WebRTC from the server; nothing is billed before it is pressed), Leave,
// Mute, the viewer count, the seconds billed and their cost every second, the
// price, the live balance. A lost connection or an ended stream says so and
// offers to reconnect. When a wallet holds the signed-in account, it signs
// delivery receipts (receipts.js). The markup is templates/parts/live_player.html.

import { amountText, api, byId, every, guarded, state, viewer } from "./core.js";
import { refreshBalance } from "./signin.js";
import { DeliveryReceipts, delegate } from "./receipts.js";
import { Session } from "./session.js";

const BALANCE_EVERY_TICKS = 5;  // the live balance, every few billed seconds
const VIEWERS_EVERY_MS = 10000;  // the viewer count while not watching (watching: pushed)

export function livePlayer(streamId) {
  let session = null;
  const video = byId("video");

  function render() {
    const current = viewer.load();
    byId("sign-in-needed").hidden = Boolean(current);
    byId("watch").disabled = !current || Boolean(session);
    byId("leave").disabled = !session;
  }

  function showBalance(me) {
    byId("balance").textContent = amountText(me.balance);
  }

  function attachTrack(event) {
    const stream = video.srcObject || new MediaStream();
    stream.addTrack(event.track);
    video.srcObject = stream;
    video.play().catch(() => {});  // autoplay may wait for a click; the video stays ready
  }

  function onTick(seconds, cost) {
    state.secondsWatched = seconds;
    state.cost = cost;
    byId("seconds-watched").textContent = String(seconds);
    byId("cost").textContent = amountText(cost);
    if (seconds % BALANCE_EVERY_TICKS === 0) refreshBalance().catch(() => {});
  }

  // After a lost connection, a failure or the end: offer to try again.
  function ended(phase) {
    const retry = phase === "ended" || phase === "error";
    byId("reconnect-box").hidden = !retry || !viewer.load();
    byId("reconnect").textContent = phase === "ended" ? "Watch again" : "Reconnect";
    if (state.error && state.error.code === "unauthorized") viewer.forget();
    session = null;
    render();
  }

  async function watch() {
    const current = viewer.load();
    if (!current) return;
    byId("reconnect-box").hidden = true;
    video.srcObject = null;
    session = new Session({ livePhase: "watching", onEnd: ended, onTick });
    render();
    const join = { type: "watch", stream_id: streamId, token: current.token };
    let delegation = null;
    try {
      // The price as it is now: the delegation caps receipts at it.
      const stream = await api("GET", `/api/streams/${streamId}`);
      delegation = await delegate(current.account, stream.price_per_second, streamId);
    } catch (err) {
      session.fail(err.code || "client_error", err.message);
      return;
    }
    if (delegation) {
      join.delegation = delegation.wire;
      session.receipts = new DeliveryReceipts(session, delegation);
    }
    await session.run(join, (pc) => {
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.ontrack = attachTrack;
    });
  }

  function toggleMute() {
    video.muted = !video.muted;
    byId("mute").textContent = video.muted ? "Unmute" : "Mute";
    byId("mute").setAttribute("aria-pressed", String(video.muted));
  }

  async function showStream() {
    const stream = await api("GET", `/api/streams/${streamId}`);
    byId("price").textContent = `${amountText(stream.price_per_second)}/s`;
    if (!session) byId("viewer-count").textContent = String(stream.viewer_count);
  }

  byId("watch").addEventListener("click", guarded(watch));
  byId("reconnect").addEventListener("click", guarded(watch));
  byId("leave").addEventListener("click", guarded(() => session && session.leave()));
  byId("mute").addEventListener("click", guarded(toggleMute));
  document.addEventListener("vk:me", (event) => showBalance(event.detail));
  document.addEventListener("vk:signed-in", render);
  document.addEventListener("vk:signed-out", () => {
    if (session) session.leave();
    byId("balance").textContent = "…";
    render();
  });
  window.addEventListener("pagehide", () => session && session.leave());
  every(VIEWERS_EVERY_MS, showStream);
  render();
}
