// The moderation queue (GET /api/moderation/reports): each report with what
// was reported (its text, as text), and the actions: Remove (the chat line or
// comment is deleted and disappears from every chat; a video is archived, a
// stream ended), Dismiss, Suspend its owner (POST /api/moderation/reports/{id}).

import { byId, clearBox, showErrorIn, timeText, userApi, viewer } from "../core.js";
import { refreshBalance } from "../signin.js";

const ACTIONS = [
  ["remove", "Remove", "danger"],
  ["dismiss", "Dismiss", ""],
  ["suspend", "Suspend the owner", "danger"],
];
const TARGET = { comment: "Comment or chat message", video: "Video", stream: "Stream", user: "User" };

function text(tag, className, value) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = value === null || value === undefined ? "—" : String(value);
  return node;
}

export function moderationPage() {
  const list = byId("reports");
  const errorBox = byId("moderation-error");

  function card(report) {
    const item = document.createElement("li");
    item.className = "comment report-card";
    item.dataset.reportId = report.id;
    item.dataset.targetId = report.target_id;
    const meta = text("p", "comment-meta",
      `${TARGET[report.target_type] || report.target_type} · ${report.reason} · reported ` +
      `${timeText(report.created_at)} by ${report.reporter_account.slice(0, 8)}… · now ` +
      `${report.target.state}`);
    const quote = text("blockquote", "report-target", report.target.text);
    const owner = text("p", "muted mono", `Owner: ${report.target.owner_account || "—"}`);
    item.append(meta, quote, owner);
    if (report.description) item.append(text("p", "report-description", report.description));
    if (report.status !== "pending") {
      item.append(text("p", "muted", `${report.action || report.status} by ` +
        `${(report.reviewed_by_account || "—").slice(0, 8)}… at ${timeText(report.reviewed_at)}`));
      return item;
    }
    const actions = document.createElement("div");
    actions.className = "comment-actions";
    for (const [action, label, style] of ACTIONS) {
      if (action === "remove" && report.target_type === "user") continue;
      const button = document.createElement("button");
      button.type = "button";
      button.className = style;
      button.dataset.action = action;
      button.textContent = label;
      button.setAttribute("aria-label", `${label}: ${report.reason} report of ` +
        `“${String(report.target.text || "").slice(0, 40)}”`);
      button.addEventListener("click", () => act(report, action, item).catch(failed));
      actions.append(button);
    }
    item.append(actions);
    return item;
  }

  function failed(err) {
    showErrorIn(errorBox, err.code || "client_error", err.message);
  }

  async function act(report, action, item) {
    clearBox(errorBox);
    const done = await userApi("POST", `/api/moderation/reports/${report.id}`, { body: { action } });
    byId("queue-done").textContent =
      `${done.action} done: “${String(done.target.text || "").slice(0, 40)}” is now ${done.target.state}.`;
    item.remove();
    byId("no-reports").hidden = list.children.length > 0;
    byId("queue-title").focus();
    refreshBalance().catch(() => {});  // the navigation's count of open reports
  }

  async function load() {
    clearBox(errorBox);
    const signedIn = Boolean(viewer.load());
    byId("moderation-sign-in").hidden = signedIn;
    byId("queue").hidden = true;
    if (!signedIn) return;
    const status = byId("queue-status").value;
    try {
      const { reports } = await userApi("GET", `/api/moderation/reports?status=${status}&limit=100`);
      list.replaceChildren(...reports.map(card));
      byId("no-reports").hidden = reports.length > 0;
      byId("queue").hidden = false;
    } catch (err) {
      if (err.code === "not_moderator") {
        errorBox.dataset.code = err.code;
        errorBox.textContent = "Only moderators can see the moderation queue.";
        return;
      }
      throw err;
    }
  }

  byId("queue-title").tabIndex = -1;
  byId("queue-status").addEventListener("change", () => load().catch(failed));
  document.addEventListener("vk:signed-in", () => load().catch(failed));
  document.addEventListener("vk:signed-out", () => load().catch(failed));
  load().catch(failed);
}
