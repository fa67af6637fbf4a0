// One stream in the studio (/publish/{id}). Anyone with the key can go live
// from this browser (camera → server). Its creator, signed in, also sees the
// key once (right after creating or rotating it), rotates it, edits title and
// price, follows live stats and ends the stream.

import {
  AppError, amountText, byId, clearBox, config, every, formHandler, guarded, showErrorIn,
  userApi, viewer, wireCopyButtons,
} from "../core.js";
import { Session, prepareCall } from "../session.js";

const STATS_MS = 3000;
// The studio hands a just-created stream's key over in sessionStorage (never a
// URL); this page takes it out at once, so it is shown once.
export const NEW_KEY_PREFIX = "vilokanam.new-key.";

export function publishPage() {
  let session = null;
  let media = null;

  const setBusy = (busy) => {
    byId("start").disabled = busy;
    byId("stop").disabled = !busy;
    byId("stream-key").disabled = busy;
  };

  const stopMedia = () => {
    if (media) media.getTracks().forEach((track) => track.stop());
    media = null;
    byId("preview").srcObject = null;
  };

  async function openCamera() {
    try {
      return await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    } catch (err) {
      throw new AppError("media_denied", err.message);
    }
  }

  async function start() {
    const key = byId("stream-key").value.trim();
    if (!key) throw new AppError("missing_key", "no stream key");
    setBusy(true);
    try {
      media = await openCamera();
    } catch (err) {
      setBusy(false);
      throw err;
    }
    byId("preview").srcObject = media;
    session = new Session({
      livePhase: "publishing",
      onEnd: () => { stopMedia(); setBusy(false); session = null; },
    });
    const join = { type: "publish", stream_id: config.streamId, stream_key: key };
    await session.run(join, prepareCall((pc) => {
      for (const track of media.getTracks()) {
        pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
      }
    }));
  }

  byId("publish-form").addEventListener("submit", guarded(start));
  byId("stop").addEventListener("click", guarded(() => session && session.leave()));
  window.addEventListener("pagehide", () => session && session.leave());
  wireCopyButtons();
  managePanel();
}

function revealKey(key) {
  byId("revealed-key").value = key;
  byId("key-box").hidden = false;
  byId("stream-key").value = key;  // ready to go live from this browser
}

function takeNewKey() {
  const name = NEW_KEY_PREFIX + config.streamId;
  const key = sessionStorage.getItem(name);
  sessionStorage.removeItem(name);
  return key;
}

// The creator's part of the page: shown only to the stream's own creator.
function managePanel() {
  const panel = byId("manage");
  const errorBox = byId("manage-error");
  const editForm = byId("edit-form");
  let poller = null;
  const path = `/api/streams/${config.streamId}`;

  function showStats(stream) {
    byId("stream-title").textContent = stream.title;
    byId("stat-status").textContent = stream.status;
    byId("stat-viewers").textContent = String(stream.viewer_count);
    byId("stat-ticks").textContent = String(stream.total_ticks);
    byId("stat-price").textContent = `${amountText(stream.price_per_second)}/s`;
    byId("end-stream").disabled = stream.status === "ended" || stream.status === "archived";
  }

  async function refresh() {
    showStats(await userApi("GET", path));
  }

  async function render() {
    const current = viewer.load();
    const mine = Boolean(current) && current.account === config.creatorAccount;
    panel.hidden = !mine;
    if (poller) clearInterval(poller);
    poller = null;
    if (!mine) return;
    const stream = await userApi("GET", path);
    byId("edit-title").value = stream.title;
    byId("edit-price").value = stream.price_per_second;
    showStats(stream);
    const key = takeNewKey();
    if (key) revealKey(key);
    poller = every(STATS_MS, refresh);
  }

  formHandler(editForm, async (data) => {
    byId("edit-saved").textContent = "";
    const stream = await userApi("PATCH", path, {
      body: { title: data.get("title"), price_per_second: data.get("price_per_second") },
    });
    showStats(stream);
    byId("edit-saved").textContent = "Saved.";
  });
  byId("rotate-key").addEventListener("click", guarded(async () => {
    clearBox(errorBox);
    const { stream_key: key } = await userApi("POST", `${path}/key`);
    revealKey(key);
  }, errorBox));
  byId("end-stream").addEventListener("click", guarded(async () => {
    clearBox(errorBox);
    showStats(await userApi("POST", `${path}/end`));
  }, errorBox));
  const rerender = () => render().catch((err) => showErrorIn(errorBox, err.code, err.message));
  document.addEventListener("vk:signed-in", rerender);
  document.addEventListener("vk:signed-out", rerender);
  rerender();
}
