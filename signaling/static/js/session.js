// One media session: the websocket protocol at /ws (version 1, see
// docs/protocol.md) and the RTCPeerConnection it negotiates. The publish and
// watch pages both run one; the page shows its phase in #state, errors in
// #error and the viewer count in #viewer-count.

import { AppError, byId, clearBox, config, showErrorIn, state, vilokanam } from "./core.js";
import { setSigned } from "./receipts.js";

const PROTOCOL_VERSION = 1;
const HELLO_TIMEOUT_MS = 10000;
// A call made ahead (CallWarmer) waits this long at most for its host
// candidates, so its offer carries them and ICE can start on the answer.
const GATHER_WAIT_MS = 300;
// Once answered, only these end a session; the server keeps the socket open
// after other errors (e.g. a refused candidate), and so do we.
const SESSION_ENDING = new Set([
  "connection_failed", "worker_draining", "peer_closed", "insufficient_funds",
  "stream_not_live", "internal_error", "receipts_stopped",
]);

export function setPhase(phase) {
  state.phase = phase;
  byId("state").textContent = phase;
  document.dispatchEvent(new CustomEvent("vk:phase", { detail: phase }));
}

export function showError(code, message) {
  state.error = { code, message: message || "" };
  showErrorIn(byId("error"), code, message);
}

export function showNotice(text) {
  const box = byId("error");
  delete box.dataset.code;
  box.textContent = text;
}

export function clearError() {
  state.error = null;
  clearBox(byId("error"));
}

function setViewerCount(count) {
  state.viewerCount = count;
  byId("viewer-count").textContent = String(count);
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function parseMessage(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}

// Resolves with an open socket once the server said hello in our version.
export function openSocket() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(socketUrl());
    const fail = (code, message) => {
      clearTimeout(timer);
      ws.close();
      reject(new AppError(code, message));
    };
    const timer = setTimeout(() => fail("connection_failed", "no hello from the server"),
                             HELLO_TIMEOUT_MS);
    ws.onmessage = (event) => {
      const msg = parseMessage(event.data);
      if (!msg || msg.type !== "hello") return;
      if (msg.version !== PROTOCOL_VERSION) {
        fail("protocol_mismatch", `server speaks version ${msg.version}`);
        return;
      }
      clearTimeout(timer);
      resolve(ws);
    };
    ws.onerror = () => fail("connection_failed", "the websocket did not open");
    ws.onclose = () => fail("connection_failed", "the websocket closed before hello");
  });
}

// The parts of a call that need nothing from the server but its hello, made
// at once rather than one after the other: the socket (with hello) and the
// peer connection with its offer set. With `gather` the offer also waits
// (GATHER_WAIT_MS at most) for its candidates. Resolves with {ws, pc}.
export async function prepareCall(preparePeer, { gather = false } = {}) {
  const pc = new RTCPeerConnection({ iceServers: config.iceServers });
  const offered = (async () => {
    preparePeer(pc);
    await pc.setLocalDescription(await pc.createOffer());
    if (gather) await gathered(pc, GATHER_WAIT_MS);
  })();
  const [socket, offer] = await Promise.allSettled([openSocket(), offered]);
  if (socket.status === "fulfilled" && offer.status === "fulfilled") return { ws: socket.value, pc };
  pc.close();
  if (socket.status === "fulfilled") socket.value.close();
  throw socket.status === "rejected" ? socket.reason : offer.reason;
}

function gathered(pc, limitMs) {
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState !== "complete") return;
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }, limitMs);
    pc.addEventListener("icegatheringstatechange", check);
    check();
  });
}

function usable(call) {
  return call.ws.readyState === WebSocket.OPEN && call.pc.signalingState === "have-local-offer";
}

function discard(call) {
  call.pc.close();
  call.ws.onclose = null;
  call.ws.close();
}

// A call made before it is asked for (the watch page, before Watch): the
// socket said hello and the offer is ready, so the click only sends the join.
// Nothing is admitted or billed until then: the server sees an idle socket.
export class CallWarmer {
  constructor(preparePeer) {
    this.preparePeer = preparePeer;
    this.pending = null;  // a promise of {ws, pc}, or null
  }

  warm() {
    if (this.pending) return;
    const pending = prepareCall(this.preparePeer, { gather: true });
    pending.catch(() => {
      if (this.pending === pending) this.pending = null;  // take() makes a fresh one
    });
    this.pending = pending;
  }

  // The warmed call while it is still good (its socket open, its offer not
  // used), else one made now.
  async take() {
    const pending = this.pending;
    this.pending = null;
    if (pending) {
      const call = await pending.catch(() => null);
      if (call && usable(call)) return call;
      if (call) discard(call);
    }
    return prepareCall(this.preparePeer);
  }

  drop() {
    const pending = this.pending;
    this.pending = null;
    if (pending) pending.then(discard, () => {});
  }
}

export class Session {
  constructor({ livePhase, onEnd, onTick = () => {}, onMessage = () => {} }) {
    this.livePhase = livePhase;   // "publishing" or "watching" once media flows
    this.onEnd = onEnd;           // called once when the session is over, with its phase
    this.onTick = onTick;         // (seconds, cost) every billed second (watching)
    this.onMessage = onMessage;   // every other message, for panels that land later (chat)
    this.ws = null;
    this.pc = null;
    this.answered = false;
    this.localCandidates = [];    // held until the answer: the server has no peer before
    this.remoteCandidates = [];   // held until the remote description is set
    this.receipts = null;         // a watch with signed delivery receipts (receipts.js)
    this.closed = false;
  }

  // Never throws: a failed start tears the session down (and resets the buttons).
  // `join` is the join message or a promise of it (the page's own work at the
  // click, e.g. a delegation); `call` a promise of {ws, pc} (prepareCall,
  // CallWarmer.take): both run at once.
  async run(join, call) {
    try {
      await this.start(join, call);
    } catch (err) {
      this.fail(err.code || "client_error", err.message);
    }
  }

  async start(join, call) {
    clearError();
    setPhase("connecting");
    const [joined, ready] = await Promise.allSettled([join, call]);
    if (ready.status === "fulfilled") this.adopt(ready.value);  // close() now ends them
    if (joined.status === "rejected") throw joined.reason;
    if (ready.status === "rejected") throw ready.reason;
    if (this.closed) return;  // left (or the socket went) while the join was being made
    setPhase("negotiating");
    // The offer as it is now carries the candidates gathered so far; the rest
    // trickle after the answer (a repeat is ignored by the server).
    this.send({ ...joined.value, sdp: this.pc.localDescription.sdp });
    if (this.pc.iceGatheringState === "complete") this.sendCandidate(null);
  }

  adopt({ ws, pc }) {
    this.ws = ws;
    ws.onmessage = (event) => this.receive(parseMessage(event.data));
    ws.onclose = () => this.lost();
    this.pc = pc;
    vilokanam.pc = pc;
    pc.onicecandidate = (event) => this.sendCandidate(event.candidate);
    pc.onconnectionstatechange = () => this.connectionChanged(pc.connectionState);
    if (ws.readyState !== WebSocket.OPEN) this.lost();
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  sendCandidate(candidate) {
    // null is the end of our candidates; the protocol says so explicitly.
    const message = { type: "candidate", candidate: candidate ? candidate.toJSON() : null };
    if (this.answered) this.send(message);
    else this.localCandidates.push(message);
  }

  receive(msg) {
    if (!msg || this.closed) return;
    const handler = {
      answer: () => this.acceptAnswer(msg),
      candidate: () => this.addRemoteCandidate(msg.candidate),
      viewer_count: () => setViewerCount(msg.count),
      tick: () => this.onTick(msg.seconds, msg.cost),
      receipt_accepted: () => setSigned(msg.seconds),
      stream_started: () => setPhase("live"),
      stream_ended: () => this.ended(),
      error: () => this.serverError(msg.code, msg.message),
    }[msg.type] || (() => this.onMessage(msg));  // newer servers may send more
    Promise.resolve()
      .then(handler)
      .catch((err) => this.fail(err.code || "client_error", err.message));
  }

  async acceptAnswer(msg) {
    await this.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
    state.sessionId = msg.session_id || null;
    this.answered = true;
    if (this.receipts) this.receipts.start(msg.viewer_session_id);
    this.localCandidates.splice(0).forEach((m) => this.send(m));
    for (const candidate of this.remoteCandidates.splice(0)) await this.addRemoteCandidate(candidate);
  }

  async addRemoteCandidate(candidate) {
    if (!this.pc.remoteDescription) {
      this.remoteCandidates.push(candidate);
      return;
    }
    // An empty/null candidate is the server's end of candidates.
    await this.pc.addIceCandidate(candidate && candidate.candidate ? candidate : null);
  }

  connectionChanged(connection) {
    state.connection = connection;
    if (connection === "connected" && state.phase === "negotiating") setPhase(this.livePhase);
    if (connection === "failed") this.fail("connection_failed", "the media connection failed");
  }

  ended() {
    showNotice("The stream has ended.");
    this.close("ended");
  }

  serverError(code, message) {
    // Before the answer the join itself failed: nothing to keep.
    if (!this.answered || SESSION_ENDING.has(code)) this.fail(code, message);
    else showError(code, message);
  }

  lost() {
    if (!this.closed) this.fail("connection_lost", "the websocket closed");
  }

  fail(code, message) {
    showError(code, message);
    this.close("error");
  }

  async leave() {
    // A last receipt first, so the bill can rest on the viewer's own signature.
    if (this.receipts) await this.receipts.flush().catch(() => {});
    this.send({ type: "leave" });
    this.close("left");
  }

  close(phase) {
    if (this.closed) return;
    this.closed = true;
    if (this.receipts) this.receipts.stop();
    setPhase(phase);
    if (this.pc) this.pc.close();  // kept in window.vilokanam.pc for a last getStats()
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
    }
    this.onEnd(phase);
  }
}
