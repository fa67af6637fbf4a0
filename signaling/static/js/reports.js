// Report buttons beside other people's chat lines and comments: one dialog
// (templates/parts/report_dialog.html) asks for a reason and sends
// POST /api/reports; the moderation queue (/moderation) shows it.

import { byId, formHandler, userApi } from "./core.js";

let target = null;  // {type, id} of the open report

function setUp() {
  const form = byId("report-form");
  if (!form || form.dataset.wired) return form;
  form.dataset.wired = "true";
  formHandler(form, async (data) => {
    await userApi("POST", "/api/reports", { body: {
      target_type: target.type, target_id: target.id, reason: data.get("reason"),
      description: data.get("description") || undefined,
    } });
    form.hidden = true;
    byId("report-done").hidden = false;
    byId("report-close").focus();
  });
  return form;
}

export function reportButton(type, id, what) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link-button report";
  button.textContent = "Report";
  button.setAttribute("aria-label", `Report ${what}`);
  button.addEventListener("click", () => {
    const form = setUp();
    if (!form) return;
    target = { type, id };
    form.reset();
    form.hidden = false;
    byId("report-done").hidden = true;
    byId("report-what").textContent = `Reporting ${what}.`;
    byId("report-dialog").showModal();
  });
  return button;
}
