/*
 * Vilokanam pages: the publish page (camera → server) and the watch page
 * (server → <video>). One file, no build step.
 *
 * Shared plumbing first: the websocket protocol at /ws (version 1, see
 * docs/protocol.md), the RTCPeerConnection it negotiates, and signing in (a
 * Polkadot wallet extension, or dev accounts in dev mode). Then one small
 * controller per page, chosen by <body data-page="…">.
 *
 * The page's configuration (ICE servers, stream id, dev mode) comes from the
 * server as JSON in #vk-config: never a public STUN default, never a secret in
 * a URL. `window.vilokanam = {pc, state}` lets browser tests read getStats().
 */
(() => {
  "use strict";

  const PROTOCOL_VERSION = 1;
  const HELLO_TIMEOUT_MS = 10000;
  const VIEWER_STORAGE_KEY = "vilokanam.viewer";
  const APP_NAME = "Vilokanam-view";  // how the wallet extension names this site

  // What to tell a person for each error code (signaling/protocol.py's
  // ErrorCode and the page's own); unknown codes show the server's message.
  const ERROR_TEXT = {
    unauthorized: {
      publish: "That stream key was refused.",
      watch: "Your viewer token was refused. Get a new one.",
    },
    stream_not_found: "This stream does not exist.",
    stream_not_live: "This stream is not live right now. Try again when it starts.",
    already_live: "Someone is already publishing to this stream.",
    insufficient_funds: "Your balance is too low to watch. Deposit tokens, then try again.",
    no_capacity: "The server is full right now. Try again in a moment.",
    sfu_unavailable: "The media server is unavailable. Try again in a moment.",
    worker_draining: "The media server is restarting. Try again.",
    no_supported_codec: "Your browser offered no codec the server forwards (VP8/H.264, Opus).",
    too_many_tracks: "Only one video and one audio track can be published.",
    bad_sdp: "The server could not use this browser's connection offer.",
    rate_limited: "Too many attempts. Wait a moment and try again.",
    media_denied: "The camera or microphone could not be opened.",
    missing_key: "Enter the stream key first.",
    connection_failed: "Could not connect to the server.",
    connection_lost: "The connection to the server was lost.",
    protocol_mismatch: "The server speaks another protocol version. Reload the page.",
    // Wallet login (POST /api/auth/challenge, /api/auth/verify).
    no_wallet: "No Polkadot wallet extension found. Install polkadot{.js} (or a compatible " +
      "wallet), allow this site, and reload the page.",
    no_wallet_accounts: "The wallet shares no Polkadot (sr25519 or ed25519) account with this " +
      "site. Add one, or allow one for this site, in the extension.",
    wallet_denied: "The wallet did not allow this site.",
    wallet_cancelled: "The wallet did not sign the login message.",
    challenge_invalid: "The login message expired or was already used. Log in again.",
    bad_signature: "The wallet's signature does not match the account. Log in again.",
    invalid_account: "That is not a Polkadot account address.",
    // Signed delivery receipts.
    receipts_required: "This stream is watched only with a wallet that signs delivery " +
      "receipts. Install polkadot{.js} (or a compatible wallet) and allow this site.",
    delegation_refused: "The wallet's delegation to this page was refused.",
    receipt_refused: "A delivery receipt was refused.",
    receipts_stopped: "No signed receipt covered the seconds watched, so the stream stopped.",
  };
  // Once answered, only these end a session; the server keeps the socket
  // open after other errors (e.g. a refused candidate), and so do we.
  const SESSION_ENDING = new Set([
    "connection_failed", "worker_draining", "peer_closed", "insufficient_funds",
    "stream_not_live", "internal_error", "receipts_stopped",
  ]);

  const config = JSON.parse(document.getElementById("vk-config").textContent);
  const state = {
    page: document.body.dataset.page,
    phase: "idle",          // idle, connecting, negotiating, publishing/watching, live, ended, left, error
    connection: "new",      // RTCPeerConnection.connectionState
    viewerCount: 0,
    sessionId: null,
    error: null,            // {code, message} of the last error shown
  };
  const vilokanam = { pc: null, state, config };
  window.vilokanam = vilokanam;

  const byId = (id) => document.getElementById(id);

  // ---- what the page shows -------------------------------------------------

  function setPhase(phase) {
    state.phase = phase;
    byId("state").textContent = phase;
  }

  function showError(code, message) {
    state.error = { code, message: message || "" };
    const text = ERROR_TEXT[code];
    const box = byId("error");
    box.dataset.code = code;
    box.textContent = (text && typeof text === "object" ? text[state.page] : text) || message || code;
  }

  function showNotice(text) {
    const box = byId("error");
    delete box.dataset.code;
    box.textContent = text;
  }

  function clearError() {
    state.error = null;
    showNotice("");
  }

  function setViewerCount(count) {
    state.viewerCount = count;
    byId("viewer-count").textContent = String(count);
  }

  // Metering: the seconds billed so far and their cost (watch page only).
  function setMetering(seconds, cost) {
    state.secondsWatched = seconds;
    state.cost = cost;
    const watched = byId("seconds-watched");
    if (watched) watched.textContent = String(seconds);
    const total = byId("cost");
    if (total) total.textContent = `${cost} ${config.tokenSymbol || ""}`.trim();
  }

  class SessionError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  // Every UI callback goes through here: an error is shown, never thrown
  // into the page as an unhandled rejection.
  function guarded(action) {
    return (event) => {
      if (event && event.type === "submit") event.preventDefault();
      Promise.resolve()
        .then(() => action(event))
        .catch((err) => showError(err.code || "client_error", err.message));
    };
  }

  // ---- the websocket ---------------------------------------------------------

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
  function openSocket() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(socketUrl());
      const fail = (code, message) => {
        clearTimeout(timer);
        ws.close();
        reject(new SessionError(code, message));
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

  // ---- one session: a socket and the peer connection it negotiates -------------

  class Session {
    constructor({ livePhase, onEnd }) {
      this.livePhase = livePhase;   // "publishing" or "watching" once media flows
      this.onEnd = onEnd;           // called once when the session is over
      this.ws = null;
      this.pc = null;
      this.answered = false;
      this.localCandidates = [];    // held until the answer: the server has no peer before
      this.remoteCandidates = [];   // held until the remote description is set
      this.receipts = null;         // a watch with signed delivery receipts
      this.closed = false;
    }

    async start(join, preparePeer) {
      clearError();
      setPhase("connecting");
      this.ws = await openSocket();
      this.ws.onmessage = (event) => this.receive(parseMessage(event.data));
      this.ws.onclose = () => this.lost();
      this.pc = this.createPeer();
      preparePeer(this.pc);
      await this.pc.setLocalDescription(await this.pc.createOffer());
      setPhase("negotiating");
      this.send({ ...join, sdp: this.pc.localDescription.sdp });
    }

    createPeer() {
      const pc = new RTCPeerConnection({ iceServers: config.iceServers });
      vilokanam.pc = pc;
      pc.onicecandidate = (event) => this.sendCandidate(event.candidate);
      pc.onconnectionstatechange = () => this.connectionChanged(pc.connectionState);
      return pc;
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
        tick: () => setMetering(msg.seconds, msg.cost),
        receipt_accepted: () => setSigned(msg.seconds),
        stream_started: () => setPhase("live"),
        stream_ended: () => this.ended(),
        error: () => this.serverError(msg.code, msg.message),
      }[msg.type];
      if (!handler) return;  // newer servers may send more; ignore what we do not know
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

  // ---- viewer-signed delivery receipts (docs/protocol.md, docs/metering.md) -------
  //
  // At watch, the wallet signs once a delegation to an Ed25519 key made here
  // (WebCrypto: no library), for this stream, capped at its price, for a few
  // hours. Every 10 s the page signs with that key a cumulative receipt: the
  // seconds in which its peer connection really received media (getStats
  // bytesReceived grew) and their exact amount. No wallet: the server's meter
  // bills the session, as for any player that cannot sign.

  const RECEIPT_EVERY_MS = 10000;
  const DELEGATION_S = 6 * 3600;

  function bytesHex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Exact money: a decimal string of tokens <-> integer planck (BigInt).
  function toPlanck(amount, decimals) {
    const [whole, fraction = ""] = String(amount).split(".");
    return BigInt(whole + fraction.padEnd(decimals, "0").slice(0, decimals));
  }

  function fromPlanck(planck, decimals) {
    const digits = planck.toString().padStart(decimals + 1, "0");
    const whole = digits.slice(0, digits.length - decimals);
    const fraction = digits.slice(digits.length - decimals).replace(/0+$/, "");
    return fraction ? `${whole}.${fraction}` : whole;
  }

  function setSigned(seconds) {
    const shown = byId("signed-seconds");
    if (!shown) return;
    shown.dataset.vkBilling = "signed";
    shown.textContent = `${seconds} s`;
  }

  // The delegation for `account`, or null when no wallet holds that account.
  async function delegate(account, price) {
    if (!window.injectedWeb3 || !(window.crypto && crypto.subtle)) return null;
    const wallet = await connectWallet();
    if (!wallet.accounts.some((a) => a.address === account)) return null;
    const key = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    const publicKey = bytesHex(await crypto.subtle.exportKey("raw", key.publicKey));
    const expiresAt = Math.floor(Date.now() / 1000) + DELEGATION_S;
    const text = `vilokanam:delegation:v1:${account}:${config.streamId}:${publicKey}:` +
      `${price}:${expiresAt}`;
    let signed;
    try {
      signed = await wallet.signer.signRaw({ address: account, data: hexOfText(text), type: "bytes" });
    } catch (err) {
      throw new SessionError("wallet_cancelled", err.message);
    }
    return {
      key, price,
      wire: { session_key: `0x${publicKey}`, price_cap: price, expires_at: expiresAt,
              signature: signed.signature },
    };
  }

  class DeliveryReceipts {
    constructor(session, delegation) {
      this.session = session;
      this.delegation = delegation;
      this.viewerSessionId = null;
      this.received = 0;      // seconds in which media arrived
      this.signed = 0;        // the seconds of the last receipt sent
      this.lastBytes = 0;
      this.timers = [];
      vilokanam.receipts = this;  // browser tests read it
    }

    start(viewerSessionId) {
      this.viewerSessionId = viewerSessionId;
      setSigned(0);
      this.timers.push(setInterval(() => this.measure().catch(() => {}), 1000));
      this.timers.push(setInterval(() => this.flush().catch(() => {}), RECEIPT_EVERY_MS));
    }

    async measure() {
      const stats = await this.session.pc.getStats();
      let bytes = 0;
      stats.forEach((report) => {
        if (report.type === "inbound-rtp") bytes += report.bytesReceived || 0;
      });
      if (bytes > this.lastBytes) this.received += 1;
      this.lastBytes = bytes;
    }

    async flush() {
      const seconds = this.received;
      if (!this.viewerSessionId || seconds <= this.signed) return;  // nothing new to sign
      const decimals = config.tokenDecimals;
      const amount = fromPlanck(BigInt(seconds) * toPlanck(this.delegation.price, decimals),
                                decimals);
      const text = `vilokanam:receipt:v1:${this.viewerSessionId}:${seconds}:${amount}`;
      const signature = await crypto.subtle.sign(
        { name: "Ed25519" }, this.delegation.key.privateKey, new TextEncoder().encode(text));
      this.signed = seconds;
      this.session.send({ type: "receipt", viewer_session_id: this.viewerSessionId, seconds,
                          amount, signature: `0x${bytesHex(signature)}` });
    }

    stop() {
      this.timers.splice(0).forEach(clearInterval);
    }
  }

  // A Session whose start failed must still be torn down (and the buttons reset).
  async function runSession(session, join, preparePeer) {
    try {
      await session.start(join, preparePeer);
    } catch (err) {
      session.fail(err.code || "client_error", err.message);
    }
  }

  // ---- HTTP API ---------------------------------------------------------------

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
      throw new SessionError(error.code || "http_error", error.message || response.statusText);
    }
    return data;
  }

  // ---- signing in ----------------------------------------------------------------

  // The token lives in sessionStorage: this tab only, gone when it closes.
  // Both pages share it: one sign-in per tab.
  const viewer = {
    load() {
      try {
        return JSON.parse(sessionStorage.getItem(VIEWER_STORAGE_KEY)) || null;
      } catch {
        return null;
      }
    },
    save(token, account) {
      sessionStorage.setItem(VIEWER_STORAGE_KEY, JSON.stringify({ token, account }));
    },
    forget() {
      sessionStorage.removeItem(VIEWER_STORAGE_KEY);
    },
  };

  // What the extension signs with; ecdsa/ethereum keys give signatures the server refuses.
  const WALLET_KEY_TYPES = new Set(["sr25519", "ed25519"]);

  function hexOfText(text) {
    const bytes = new TextEncoder().encode(text);
    return `0x${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  }

  // A Polkadot wallet extension (window.injectedWeb3, polkadot{.js} first):
  // the accounts it shares with this site and its signer.
  async function connectWallet() {
    const wallets = window.injectedWeb3 || {};
    const name = wallets["polkadot-js"] ? "polkadot-js" : Object.keys(wallets)[0];
    if (!name) throw new SessionError("no_wallet", "no window.injectedWeb3");
    let injected;
    try {
      injected = await wallets[name].enable(APP_NAME);
    } catch (err) {
      throw new SessionError("wallet_denied", err.message);
    }
    const accounts = (await injected.accounts.get())
      .filter((account) => !account.type || WALLET_KEY_TYPES.has(account.type));
    if (!accounts.length) throw new SessionError("no_wallet_accounts", "no usable account");
    return { signer: injected.signer, accounts };
  }

  // Sign the server's challenge; the extension wraps it in <Bytes>…</Bytes>,
  // which the server accepts (a signed message can never be a transaction).
  async function walletLogin(signer, address) {
    const { challenge } = await api("POST", "/api/auth/challenge", { body: { account: address } });
    let signed;
    try {
      signed = await signer.signRaw({ address, data: hexOfText(challenge), type: "bytes" });
    } catch (err) {
      throw new SessionError("wallet_cancelled", err.message);
    }
    return api("POST", "/api/auth/verify",
               { body: { account: address, signature: signed.signature } });
  }

  // The sign-in part both pages have: who is signed in, the wallet login, and
  // (dev mode only) the dev accounts. `onChange` re-renders the page.
  function signInPanel({ onChange, onSignOut = () => {} }) {
    let wallet = null;  // {signer, accounts} once the extension let us in
    const walletAccount = byId("wallet-account");

    function signedIn({ token, account }) {
      viewer.save(token, account);
      clearError();
      onChange();
    }

    async function walletSignIn() {
      if (!wallet) {
        wallet = await connectWallet();
        for (const { address, name } of wallet.accounts) {
          walletAccount.add(new Option(`${name || "Account"} (${address.slice(0, 8)}…)`, address));
        }
        // Several accounts: let the person pick one, then sign on the next click.
        if (wallet.accounts.length > 1) return onChange();
      }
      signedIn(await walletLogin(wallet.signer, walletAccount.value));
    }

    async function devSignIn() {
      signedIn(await api("POST", "/api/dev/token", { body: { account: byId("dev-account").value } }));
    }

    function signOut() {
      onSignOut();
      viewer.forget();
      onChange();
    }

    for (const { name, account } of config.devAccounts) {
      byId("dev-account").add(new Option(`${name} (${account.slice(0, 8)}…)`, account));
    }
    byId("wallet-form").addEventListener("submit", guarded(walletSignIn));
    byId("dev-token-form").addEventListener("submit", guarded(devSignIn));
    byId("sign-out").addEventListener("click", guarded(signOut));

    return {
      signedIn,
      render(current) {
        byId("account").textContent = current ? current.account : "nobody yet";
        byId("sign-out").hidden = !current;
        byId("wallet-form").hidden = Boolean(current);
        walletAccount.hidden = !wallet || wallet.accounts.length < 2;
        byId("wallet-sign-in").textContent = walletAccount.hidden
          ? "Log in with wallet" : "Sign in as this account";
        byId("dev-token-form").hidden = !config.devMode || Boolean(current);
      },
    };
  }

  // ---- publish page ------------------------------------------------------------

  function publishPage() {
    let session = null;
    let media = null;

    const setBusy = (busy) => {
      byId("start").disabled = busy;
      byId("stop").disabled = !busy;
      byId("stream-key").disabled = busy;
    };

    const stopMedia = () => {
      if (media) media.getTracks().forEach((track) => track.stop());
      media = null;
      byId("preview").srcObject = null;
    };

    async function openCamera() {
      try {
        return await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      } catch (err) {
        throw new SessionError("media_denied", err.message);
      }
    }

    async function start() {
      const key = byId("stream-key").value.trim();
      if (!key) throw new SessionError("missing_key", "no stream key");
      setBusy(true);
      try {
        media = await openCamera();
      } catch (err) {
        setBusy(false);
        throw err;
      }
      byId("preview").srcObject = media;
      session = new Session({
        livePhase: "publishing",
        onEnd: () => { stopMedia(); setBusy(false); session = null; },
      });
      const join = { type: "publish", stream_id: config.streamId, stream_key: key };
      await runSession(session, join, (pc) => {
        for (const track of media.getTracks()) {
          pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
        }
      });
    }

    const signIn = signInPanel({ onChange: () => signIn.render(viewer.load()) });
    signIn.render(viewer.load());
    byId("publish-form").addEventListener("submit", guarded(start));
    byId("stop").addEventListener("click", guarded(() => session && session.leave()));
    window.addEventListener("pagehide", () => session && session.leave());
  }

  // ---- watch page ----------------------------------------------------------------

  function watchPage() {
    let session = null;
    const video = byId("video");

    const signIn = signInPanel({ onChange: () => render(), onSignOut: () => session && session.leave() });

    function render() {
      const current = viewer.load();
      signIn.render(current);
      byId("token-form").hidden = config.devMode || Boolean(current);
      byId("watch").disabled = !current || Boolean(session);
      byId("leave").disabled = !session;
    }

    async function tokenSignIn() {
      const token = byId("token").value.trim();
      const me = await api("GET", "/api/me", { token });  // checks the token, names its account
      byId("token").value = "";
      signIn.signedIn({ token, account: me.account });
    }

    function attachTrack(event) {
      const stream = video.srcObject || new MediaStream();
      stream.addTrack(event.track);
      video.srcObject = stream;
      video.play().catch(() => {});  // autoplay may wait for a click; the video stays ready
    }

    async function watch() {
      const current = viewer.load();
      if (!current) throw new SessionError("unauthorized", "no viewer token");
      video.srcObject = null;
      session = new Session({
        livePhase: "watching",
        onEnd: () => {
          if (state.error && state.error.code === "unauthorized") viewer.forget();
          session = null;
          render();
        },
      });
      render();
      const join = { type: "watch", stream_id: config.streamId, token: current.token };
      let delegation = null;
      try {
        const stream = await api("GET", `/api/streams/${config.streamId}`);
        delegation = await delegate(current.account, stream.price_per_second);
      } catch (err) {
        session.fail(err.code || "client_error", err.message);
        return;
      }
      if (delegation) {
        join.delegation = delegation.wire;
        session.receipts = new DeliveryReceipts(session, delegation);
      }
      await runSession(session, join, (pc) => {
        pc.addTransceiver("video", { direction: "recvonly" });
        pc.addTransceiver("audio", { direction: "recvonly" });
        pc.ontrack = attachTrack;
      });
    }

    function toggleMute() {
      video.muted = !video.muted;
      byId("mute").textContent = video.muted ? "Unmute" : "Mute";
      byId("mute").setAttribute("aria-pressed", String(video.muted));
    }

    byId("token-form").addEventListener("submit", guarded(tokenSignIn));
    byId("watch").addEventListener("click", guarded(watch));
    byId("leave").addEventListener("click", guarded(() => session && session.leave()));
    byId("mute").addEventListener("click", guarded(toggleMute));
    window.addEventListener("pagehide", () => session && session.leave());
    render();
  }

  const pages = { publish: publishPage, watch: watchPage };
  if (pages[state.page]) pages[state.page]();
})();
