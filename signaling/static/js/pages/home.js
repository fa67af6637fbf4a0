// Home: the search box navigates to /?q=… (CSP form-action 'none' keeps every
// form from submitting itself, so the page does it), and the live viewer
// counts refresh while the page is open (the categories and videos below are
// plain links, rendered by the server).

import { api, byId, config, every } from "../core.js";

const REFRESH_MS = 10000;

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
    const counts = new Map(streams.map((s) => [s.id, s.viewer_count]));
    for (const card of cards()) {
      const count = counts.get(card.dataset.streamId);
      if (count !== undefined) card.querySelector(".viewer-count").textContent = String(count);
    }
  });
}
