// Home: the search box navigates to /?q=… (CSP form-action 'none' keeps every
// form from submitting itself, so the page does it), and the live viewer
// counts and live thumbnails refresh while the page is open (the categories and videos below are
// plain links, rendered by the server).

import { api, byId, config, every } from "../core.js";

const REFRESH_MS = 10000;

// A newer live thumbnail (its URL carries the capture time), from our own origin.
function showThumbnail(card, url) {
  const { pathname, search } = new URL(url);
  const src = pathname + search;
  let img = card.querySelector(".live-thumb");
  if (img && img.getAttribute("src") === src) return;
  if (!img) {
    img = document.createElement("img");
    img.className = "live-thumb";
    img.alt = "";
    img.width = 640;
    img.height = 360;
    card.querySelector(".thumb").prepend(img);
  }
  img.src = src;
}

export function homePage() {
  byId("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = byId("search").value.trim();
    location.assign(query ? `/?q=${encodeURIComponent(query)}` : "/");
  });

  const cards = () => document.querySelectorAll(".stream-card[data-stream-id]");
  if (!cards().length) return;
  every(REFRESH_MS, async () => {
    const params = new URLSearchParams({ status: "live" });
    if (config.query) params.set("q", config.query);
    if (config.category) params.set("category", config.category);
    const { streams } = await api("GET", `/api/streams?${params}`);
    const live = new Map(streams.map((s) => [s.id, s]));
    for (const card of cards()) {
      const stream = live.get(card.dataset.streamId);
      if (stream === undefined) continue;
      card.querySelector(".viewer-count").textContent = String(stream.viewer_count);
      if (stream.thumbnail_url) showThumbnail(card, stream.thumbnail_url);
    }
  });
}
