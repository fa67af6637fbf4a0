// The video page: a paid view of a ready video, played with hls.js (served
// from /static, no CDN) or the browser's own HLS. The server bills every
// second of media it delivers once; this page shows the seconds and their
// cost as the server counts them (GET /api/videos/{id}/views/{view}). Below
// the player: Like (the count is the server's) and the comments (comments.js).

import {
  AppError, amountText, byId, clearBox, config, guarded, showErrorIn, state, userApi, viewer,
} from "../core.js";
import { Comments } from "../comments.js";
import { setPhase, showNotice } from "../session.js";

const METER_EVERY_MS = 1000;

export function videoPage() {
  const video = byId("video");
  let view = null;  // {view_id, playlist_url, ...} once POST .../views answered

  function render() {
    const current = viewer.load();
    byId("sign-in-needed").hidden = Boolean(current);
    byId("play").disabled = !current || Boolean(view);
  }

  async function refreshMetering() {
    if (!view || !viewer.load()) return;
    const status = await userApi("GET", `/api/videos/${config.videoId}/views/${view.view_id}`);
    byId("seconds-watched").textContent = String(status.seconds);
    byId("cost").textContent = amountText(status.cost);
    if (status.cut_off && state.phase !== "cut off") {
      setPhase("cut off");
      showNotice("Your balance ran out: playback stopped.");
    }
  }

  function attach(url) {
    if (window.Hls && window.Hls.isSupported()) {
      const hls = new window.Hls({ enableWorker: false, startLevel: 0 });
      hls.on(window.Hls.Events.ERROR, (_event, data) => {
        if (!data.fatal) return;
        setPhase("stopped");
        const code = data.response && data.response.code;
        showNotice(code === 403 ? "Playback refused (403): the balance ran out or the link expired."
                                : `Playback error: ${data.details}`);
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      window.vkHls = hls;  // browser tests read it
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url;  // Safari: native HLS
    } else {
      throw new AppError("no_hls", "This browser cannot play HLS.");
    }
  }

  async function play() {
    view = await userApi("POST", `/api/videos/${config.videoId}/views`);
    render();
    video.addEventListener("playing", () => setPhase("playing"));
    video.addEventListener("ended", () => setPhase("ended"));
    attach(view.playlist_url);
    setPhase("loading");
    video.play().catch(() => {});  // autoplay may wait for a click; the controls stay
    setInterval(() => refreshMetering().catch(() => {}), METER_EVERY_MS);
  }

  let liked = false;
  function showLike(answer) {
    liked = answer.liked;
    byId("like").textContent = liked ? "Liked" : "Like";
    byId("like").setAttribute("aria-pressed", String(liked));
    byId("like-count").textContent = String(answer.like_count);
  }

  async function refreshLike() {
    if (!viewer.load()) {
      showLike({ liked: false, like_count: byId("like-count").textContent });
      return;
    }
    showLike(await userApi("GET", `/api/videos/${config.videoId}/like`));
  }

  async function toggleLike() {
    clearBox(byId("like-error"));
    if (!viewer.load()) {
      byId("sign-in-open").click();
      return;
    }
    showLike(await userApi(liked ? "DELETE" : "POST", `/api/videos/${config.videoId}/like`));
  }

  const likeFailed = (err) => showErrorIn(byId("like-error"), err.code || "client_error",
                                          err.message);
  byId("like").addEventListener("click", () => toggleLike().catch(likeFailed));
  document.addEventListener("vk:signed-in", () => refreshLike().catch(likeFailed));
  document.addEventListener("vk:signed-out", () => refreshLike().catch(likeFailed));
  refreshLike().catch(likeFailed);
  new Comments({ videoId: config.videoId, creatorAccount: config.creatorAccount })
    .reload().catch(() => {});

  byId("play").addEventListener("click", guarded(play));
  document.addEventListener("vk:me", (event) => {
    byId("balance").textContent = amountText(event.detail.balance);
  });
  document.addEventListener("vk:signed-in", render);
  document.addEventListener("vk:signed-out", render);
  render();
}
