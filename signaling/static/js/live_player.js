// The live player, shared by the watch page and a live channel's page: Watch
// (WebRTC from the server; nothing is billed before it is pressed), Leave,
// Mute, the viewer count, the seconds billed and their cost every second, the
// price, the live balance. A lost connection or an ended stream says so and
// offers to reconnect. When a wallet holds the signed-in account, it signs
// delivery receipts (receipts.js). The markup is templates/parts/live_player.html.

import { amountText, api, byId, every, guarded, state, viewer } from "./core.js";
import { refreshBalance } from "./signin.js";
import { DeliveryReceipts, delegate } from "./receipts.js";
import { CallWarmer, Session } from "./session.js";

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
    // Show frames as they come rather than buffer ahead (live: the first
    // frame sooner; Chromium still grows the buffer under jitter).
    if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
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
    warmer.warm();  // for Watch again
  }

  // The socket and the offer are made ahead (the page opens with one ready),
  // so Watch only sends the join; nothing is admitted or billed before it.
  const warmer = new CallWarmer((pc) => {
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.ontrack = attachTrack;
  });

  // The join message; with a wallet holding the account, its delegation, capped
  // at the price as it is now (fetched only then).
  async function joinMessage(current, forSession) {
    const join = { type: "watch", stream_id: streamId, token: current.token };
    const price = async () => (await api("GET", `/api/streams/${streamId}`)).price_per_second;
    const delegation = await delegate(current.account, price, streamId);
    if (delegation) {
      join.delegation = delegation.wire;
      forSession.receipts = new DeliveryReceipts(forSession, delegation);
    }
    return join;
  }

  async function watch() {
    const current = viewer.load();
    if (!current) return;
    byId("reconnect-box").hidden = true;
    video.srcObject = null;
    session = new Session({ livePhase: "watching", onEnd: ended, onTick });
    render();
    // The delegation and the call at once.
    await session.run(joinMessage(current, session), warmer.take());
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
  window.addEventListener("pagehide", () => {
    warmer.drop();
    if (session) session.leave();
  });
  every(VIEWERS_EVERY_MS, showStream);
  render();
  warmer.warm();
}
