// The video page: a paid view of a ready video, played with hls.js (served
// from /static, no CDN) or the browser's own HLS. The server bills every
// second of media it delivers once; this page shows the seconds and their
// cost as the server counts them (GET /api/videos/{id}/views/{view}).
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("vk-config").textContent);
  const VIEWER_STORAGE_KEY = "vilokanam.viewer";  // shared with the live pages
  const byId = (id) => document.getElementById(id);
  const state = { view: null, poll: null };

  function setState(text) { byId("state").textContent = text; }
  function showError(message) { byId("error").textContent = message; }

  async function api(method, path, { body, token } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = data.error || {};
      const failure = new Error(error.message || response.statusText);
      failure.code = error.code || "http_error";
      throw failure;
    }
    return data;
  }

  const viewer = {
    get() {
      try { return JSON.parse(sessionStorage.getItem(VIEWER_STORAGE_KEY)) || null; }
      catch { return null; }
    },
    save(token, account) {
      sessionStorage.setItem(VIEWER_STORAGE_KEY, JSON.stringify({ token, account }));
    },
  };

  function render() {
    const current = viewer.get();
    byId("account").textContent = current ? current.account : "nobody yet";
    byId("dev-token-form").hidden = !config.devMode || Boolean(current);
    byId("token-form").hidden = config.devMode || Boolean(current);
    byId("play").disabled = !current || Boolean(state.view);
  }

  async function refreshMetering() {
    const current = viewer.get();
    if (!state.view || !current) return;
    const status = await api("GET", `/api/videos/${config.videoId}/views/${state.view.view_id}`,
                             { token: current.token });
    byId("seconds-watched").textContent = String(status.seconds);
    byId("cost").textContent = `${status.cost} ${config.tokenSymbol}`;
    if (status.cut_off) {
      setState("cut off");
      showError("Your balance ran out: playback stopped.");
    }
  }

  function attach(video, url) {
    if (window.Hls && window.Hls.isSupported()) {
      const hls = new window.Hls({ enableWorker: false, startLevel: 0 });
      hls.on(window.Hls.Events.ERROR, (_event, data) => {
        if (data.fatal) {
          setState("stopped");
          const code = data.response && data.response.code;
          showError(code === 403 ? "Playback refused (403): balance ran out or the link expired."
                                 : `Playback error: ${data.details}`);
        }
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      window.vkHls = hls;
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url;  // Safari: native HLS
    } else {
      throw new Error("This browser cannot play HLS.");
    }
  }

  async function play() {
    showError("");
    const current = viewer.get();
    try {
      state.view = await api("POST", `/api/videos/${config.videoId}/views`,
                             { token: current.token });
    } catch (error) {
      showError(error.code === "insufficient_funds"
        ? "Your balance is too low to watch. Deposit tokens, then try again." : error.message);
      return;
    }
    render();
    const video = byId("video");
    video.addEventListener("playing", () => setState("playing"));
    video.addEventListener("ended", () => setState("ended"));
    attach(video, state.view.playlist_url);
    setState("loading");
    video.play().catch(() => {});
    state.poll = setInterval(() => refreshMetering().catch(() => {}), 1000);
  }

  function init() {
    const select = byId("dev-account");
    for (const { name, account } of config.devAccounts || []) {
      const option = document.createElement("option");
      option.value = account;
      option.textContent = `${name} (${account.slice(0, 8)}…)`;
      select.append(option);
    }
    byId("dev-token-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const { token, account } = await api("POST", "/api/dev/token",
                                             { body: { account: select.value } });
        viewer.save(token, account);
        render();
      } catch (error) { showError(error.message); }
    });
    byId("token-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = byId("token").value.trim();
      try {
        const me = await api("GET", "/api/me", { token });
        viewer.save(token, me.account);
        render();
      } catch (error) { showError(error.message); }
    });
    byId("play").addEventListener("click", () => play());
    render();
  }

  init();
})();
