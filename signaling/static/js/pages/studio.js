// The studio: create a stream (then its page shows the key once), the
// creator's streams; upload a video (tus, a progress bar) and follow its
// processing until ready or failed; the creator's videos and recordings
// (edit title and price); analytics (viewers over time, earnings per stream
// session, drawn by chart.js); earnings and on-chain payouts.

import {
  amountText, byId, clearFormErrors, config, formHandler, link, showErrorIn, tableRow,
  timeText, userApi, viewer,
} from "../core.js";
import { barChart, lineChart } from "../chart.js";
import { uploadVideo } from "../upload.js";
import { NEW_KEY_PREFIX } from "./publish.js";

const PROCESSING_POLL_MS = 1000;
const VIDEOS_POLL_MS = 5000;
const SESSIONS_CHARTED = 20;

function fillTable(table, empty, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows);
  table.hidden = rows.length === 0;
  empty.hidden = rows.length !== 0;
}

async function loadStreams() {
  const { streams } = await userApi("GET", "/api/me/streams");
  fillTable(byId("my-streams"), byId("no-my-streams"), streams.map((s) => tableRow([
    link(`/publish/${s.id}`, s.title), s.status, s.viewer_count, s.total_ticks,
    amountText(s.price_per_second),
    s.status === "live" ? link(`/watch/${s.id}`, "Watch") : "—",
  ])));
}

// The explorer page of a payout's block (VILOKANAM_EXPLORER_URL), or null.
function explorerHref(payout) {
  if (!config.explorerUrl || !payout.block_hash) return null;
  return config.explorerUrl
    .replaceAll("{block}", encodeURIComponent(payout.block_hash))
    .replaceAll("{extrinsic}", encodeURIComponent(payout.extrinsic_hash || ""))
    .replaceAll("{rpc}", encodeURIComponent(config.chainRpc || ""));
}

async function loadMoney() {
  const earnings = await userApi("GET", "/api/me/earnings");
  byId("total-earnings").textContent = amountText(earnings.total_earnings);
  byId("pending-payout").textContent = amountText(earnings.pending_payout);
  byId("last-payout").textContent = timeText(earnings.last_payout_at);
  const { payouts } = await userApi("GET", "/api/me/payouts");
  fillTable(byId("payouts"), byId("no-payouts"), payouts.map((p) => {
    const hash = document.createElement("code");
    hash.className = "mono";
    hash.textContent = p.extrinsic_hash || "—";
    const href = explorerHref(p);
    let cell = hash;
    if (href && p.extrinsic_hash) {
      cell = document.createElement("a");
      cell.href = href;
      cell.rel = "noopener noreferrer";
      cell.className = "extrinsic-link";
      cell.setAttribute("aria-label", `Extrinsic ${p.extrinsic_hash} in the block explorer`);
      cell.append(hash);
    }
    return tableRow([timeText(p.finalized_at || p.created_at), amountText(p.amount), p.status,
                     cell, p.block_number]);
  }));
}

// -- videos: the list, the edit dialog, the upload and its processing ----------

function durationText(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(Number(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function percent(progress) {
  return Math.round(Math.min(Math.max(Number(progress) * 100, 0), 100));
}

// "processing: transcode 40%", "failed" + the reason, "ready", …
function statusCell(video) {
  const cell = document.createElement("span");
  cell.className = `video-status status-${video.status}`;
  cell.dataset.status = video.status;
  let text = video.status;
  if (video.status === "processing" && video.processing) {
    const stage = video.processing.stage ? ` ${video.processing.stage}` : "";
    text = `processing${stage} ${percent(video.processing.progress)}%`;
  }
  cell.textContent = text;
  if (video.status === "failed" && video.failure_reason) {
    const reason = document.createElement("span");
    reason.className = "status-reason";
    reason.textContent = video.failure_reason;
    cell.append(reason);
  }
  return cell;
}

let editing = null;  // the video the dialog edits

function openEdit(video) {
  editing = video;
  const form = byId("video-edit-form");
  clearFormErrors(form);
  byId("video-edit-title").value = video.title;
  byId("video-edit-price").value = video.price_per_second || "";
  byId("video-edit-dialog").showModal();
  byId("video-edit-title").focus();
}

async function loadVideos() {
  const { videos } = await userApi("GET", "/api/me/videos?limit=100");
  fillTable(byId("my-videos"), byId("no-my-videos"), videos.map((v) => {
    const actions = document.createElement("div");
    actions.className = "row-actions";
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "edit-video";
    edit.textContent = "Edit";
    edit.setAttribute("aria-label", `Edit ${v.title}`);
    edit.addEventListener("click", () => openEdit(v));
    actions.append(edit);
    if (v.status === "ready") actions.append(link(`/video/${v.id}`, "View"));
    const row = tableRow([v.title, v.source_stream_id ? "Recording" : "Upload", statusCell(v),
                          durationText(v.duration),
                          v.price_per_second ? amountText(v.price_per_second) : "—", actions]);
    row.dataset.videoId = v.id;
    return row;
  }));
  return videos;
}

function setUpEditDialog(refresh) {
  const dialog = byId("video-edit-dialog");
  byId("video-edit-cancel").addEventListener("click", () => dialog.close());
  formHandler(byId("video-edit-form"), async (data) => {
    const body = { title: data.get("title") };
    const price = String(data.get("price_per_second") || "").trim();
    if (price) body.price_per_second = price;
    await userApi("PATCH", `/api/videos/${editing.id}`, { body });
    dialog.close();
    await refresh();
  });
}

// Follows one video's job until it is ready or failed, on the upload panel.
async function followProcessing(videoId, refresh) {
  const bar = byId("processing-progress");
  const text = byId("processing-text");
  for (;;) {
    const video = await userApi("GET", `/api/videos/${videoId}`);
    if (video.status === "ready") {
      bar.value = 100;
      text.textContent = "Ready.";
      const box = byId("upload-link");
      box.replaceChildren(link(`/video/${video.id}`, `Open “${video.title}”`));
      box.hidden = false;
      break;
    }
    if (video.status === "failed") {
      text.className = "error";
      text.textContent = `Processing failed: ${video.failure_reason || "no reason given"}`;
      break;
    }
    const job = video.processing;
    bar.value = job ? percent(job.progress) : 0;
    text.textContent = job
      ? `${job.status}${job.stage ? `: ${job.stage}` : ""}, ${percent(job.progress)}%`
      : "Waiting for a media worker…";
    await new Promise((resolve) => { setTimeout(resolve, PROCESSING_POLL_MS); });
  }
  await refresh();
}

function megabytes(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MB`;
}

function setUpUpload(refresh) {
  const form = byId("upload-form");
  formHandler(form, async (data) => {
    const file = data.get("file");
    if (!(file instanceof File) || file.size === 0) {
      const err = new Error("Choose a video file first.");
      err.code = "empty_upload";
      throw err;
    }
    const title = String(data.get("title") || "").trim() || file.name.replace(/\.[^.]*$/, "");
    const button = byId("upload-start");
    button.disabled = true;
    byId("upload-status").hidden = false;
    byId("upload-name").textContent = title;
    byId("upload-link").hidden = true;
    const bar = byId("upload-progress");
    const text = byId("upload-progress-text");
    const processing = byId("processing-text");
    processing.className = "";
    processing.textContent = "Starts when the upload is complete.";
    byId("processing-progress").value = 0;
    try {
      const id = await uploadVideo(file, title, {
        onCreated: () => refresh(),
        onProgress: (sent, total) => {
          bar.value = Math.floor((sent / total) * 100);
          text.textContent = `${megabytes(sent)} of ${megabytes(total)}`;
        },
      });
      text.textContent = `Uploaded ${megabytes(file.size)}.`;
      form.reset();
      await refresh();
      await followProcessing(id, refresh);
    } finally {
      button.disabled = false;
    }
  });
}

// -- analytics ---------------------------------------------------------------------

function showChart(box, empty, svg) {
  box.replaceChildren(...(svg ? [svg] : []));
  box.hidden = !svg;
  empty.hidden = Boolean(svg);
}

async function loadAnalytics() {
  let samples = [];
  try {
    ({ viewers_over_time: samples } = await userApi("GET", "/api/me/dashboard?hours=24"));
  } catch (err) {
    if (err.code !== "not_a_creator") throw err;  // no stream or video yet: nothing to chart
  }
  const time = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const points = samples.map((s) => ({
    x: new Date(s.minute), y: s.viewers,
    label: `${time(new Date(s.minute))}: ${s.viewers} viewer${s.viewers === 1 ? "" : "s"}`,
  }));
  const peak = Math.max(0, ...points.map((p) => p.y));
  showChart(byId("viewers-chart"), byId("no-viewers"), points.length ? lineChart(points, {
    label: `Viewers per minute over the last 24 hours, peak ${peak}`, timeFormat: time,
  }) : null);

  const { sessions } = await userApi("GET", "/api/me/stream-sessions?limit=50");
  fillTable(byId("my-sessions"), byId("no-sessions"), sessions.map((s) => tableRow([
    timeText(s.start_time), link(`/publish/${s.stream_id}`, s.title), s.viewers, s.viewer_peak,
    s.total_ticks, amountText(s.paid), amountText(s.earned),
  ])));
  const charted = sessions.slice(0, SESSIONS_CHARTED).reverse();  // oldest on the left
  const day = (iso) => new Date(iso).toLocaleDateString([], { month: "short", day: "numeric" });
  showChart(byId("sessions-chart"), byId("no-sessions"), charted.length ? barChart(
    charted.map((s) => ({
      y: Number(s.earned), short: s.start_time ? day(s.start_time) : "—",
      label: `${s.title}, ${timeText(s.start_time)}: earned ${amountText(s.earned)}`,
    })), {
      label: `Earnings of your last ${charted.length} stream session` +
        `${charted.length === 1 ? "" : "s"} in ${config.tokenSymbol}`,
      format: (v) => String(Number(v.toPrecision(3))),
    }) : null);
}

export function studioPage() {
  const form = byId("create-form");
  const showError = (err) => showErrorIn(byId("error"), err.code, err.message);
  const refreshVideos = () => loadVideos().catch(showError);

  async function render() {
    const signedIn = Boolean(viewer.load());
    byId("sign-in-needed").hidden = signedIn;
    byId("studio").hidden = !signedIn;
    if (signedIn) await Promise.all([loadStreams(), loadMoney(), loadVideos(), loadAnalytics()]);
  }

  formHandler(form, async (data) => {
    const body = { title: data.get("title") };
    const price = String(data.get("price_per_second") || "").trim();
    if (price) body.price_per_second = price;
    const created = await userApi("POST", "/api/streams", { body });
    sessionStorage.setItem(NEW_KEY_PREFIX + created.id, created.stream_key);
    location.assign(`/publish/${created.id}`);
  });
  setUpUpload(refreshVideos);
  setUpEditDialog(refreshVideos);
  // Other videos (a recording, another tab's upload) move on by themselves.
  setInterval(() => {
    if (viewer.load() && !byId("video-edit-dialog").open) refreshVideos();
  }, VIDEOS_POLL_MS);
  const rerender = () => render().catch(showError);
  document.addEventListener("vk:signed-in", rerender);
  document.addEventListener("vk:signed-out", rerender);
  rerender();
}

