// A resumable video upload with the tus 1.0 protocol the server speaks
// (docs/vod.md): one creation POST, then PATCHes of CHUNK bytes sent with
// XMLHttpRequest, whose upload progress events move the bar byte by byte
// (fetch has no upload progress). A PATCH that fails is resumed from the
// offset the server reports (HEAD), a few times, before the upload gives up.

import { AppError, viewer } from "./core.js";

const TUS_VERSION = "1.0.0";
export const CHUNK = 4 * 1024 * 1024;
const RETRIES = 3;
const RETRY_DELAY_MS = 1000;

// tus Upload-Metadata values are base64 of UTF-8 (a title can be any text).
function base64Utf8(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function token() {
  const current = viewer.load();
  if (!current) throw new AppError("unauthorized", "not signed in");
  return current.token;
}

// One request; resolves with the XHR, rejects with the server's error (its
// JSON code and message) or network_error. `onProgress(bytesSent)` for bodies.
function send(method, path, headers, body, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    if (onProgress) xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded));
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr);
      let error = {};
      try {
        error = JSON.parse(xhr.responseText).error || {};
      } catch { /* not JSON: the status text below */ }
      if (xhr.status === 401) viewer.forget();
      reject(new AppError(error.code || "http_error", error.message || xhr.statusText,
                          xhr.status));
    });
    xhr.addEventListener("error", () => reject(new AppError("network_error", "upload failed")));
    xhr.addEventListener("abort", () => reject(new AppError("network_error", "upload aborted")));
    xhr.send(body);
  });
}

const tusHeaders = (extra = {}) => ({
  "Tus-Resumable": TUS_VERSION, Authorization: `Bearer ${token()}`, ...extra,
});

async function serverOffset(path) {
  const xhr = await send("HEAD", path, tusHeaders(), null);
  return Number(xhr.getResponseHeader("Upload-Offset"));
}

// Creates the video and sends `file`; `onProgress(sent, total)` as bytes go
// out; `onCreated(videoId)` once the server has the video. Returns its id.
export async function uploadVideo(file, title, { onProgress = () => {}, onCreated = () => {} } = {}) {
  if (!file || file.size === 0) throw new AppError("empty_upload", "Choose a video file first.");
  const meta = [`filename ${base64Utf8(file.name)}`];
  if (title) meta.push(`title ${base64Utf8(title)}`);
  const created = await send("POST", "/api/videos", tusHeaders({
    "Upload-Length": String(file.size), "Upload-Metadata": meta.join(","),
  }), null);
  const { id } = JSON.parse(created.responseText);
  onCreated(id);
  // The path, not the absolute Location: the page's own origin (CSP connect-src 'self').
  const path = `/api/videos/${id}/upload`;
  let offset = 0;
  let failures = 0;
  onProgress(0, file.size);
  while (offset < file.size) {
    const end = Math.min(offset + CHUNK, file.size);
    const start = offset;
    try {
      const xhr = await send("PATCH", path, tusHeaders({
        "Upload-Offset": String(start), "Content-Type": "application/offset+octet-stream",
      }), file.slice(start, end), (sent) => onProgress(start + sent, file.size));
      offset = Number(xhr.getResponseHeader("Upload-Offset"));
      failures = 0;
    } catch (err) {
      if (err.code !== "network_error" && err.code !== "offset_mismatch") throw err;
      failures += 1;
      if (failures > RETRIES) throw err;
      await new Promise((resolve) => { setTimeout(resolve, RETRY_DELAY_MS * failures); });
      offset = await serverOffset(path);  // resume where the server's bytes end
    }
    onProgress(offset, file.size);
  }
  return id;
}
