// A category: its live streams and videos are in the HTML; the viewer counts
// refresh while the page is open.

import { api, config, every } from "../core.js";

const REFRESH_MS = 10000;

export function categoryPage() {
  const cards = () => document.querySelectorAll(".stream-card[data-stream-id]");
  if (!cards().length) return;
  every(REFRESH_MS, async () => {
    const params = new URLSearchParams({ status: "live", category: config.category });
    const { streams } = await api("GET", `/api/streams?${params}`);
    const counts = new Map(streams.map((s) => [s.id, s.viewer_count]));
    for (const card of cards()) {
      const count = counts.get(card.dataset.streamId);
      if (count !== undefined) card.querySelector(".viewer-count").textContent = String(count);
    }
  });
}
