// A stream's live chat beside the player: its own websocket to /ws (the
// chat does not depend on watching, docs/protocol.md "chat_join"), signed in
// with `auth` when someone is, the last 50 lines, then every new line, tip and
// deletion. Every line is text (textContent), never HTML. Enter sends.

import { amountText, byId, errorText, userApi, viewer } from "./core.js";
import { openSocket } from "./session.js";
import { reportButton } from "./reports.js";

const MAX_LINES = 200;  // older lines leave the panel; the server keeps them
const CHAT_TEXT = {
  chat_rate_limited: (msg) => `You are sending messages too fast: wait ${msg.retry_after || 1} s.`,
  invalid_content: () => "A message is 1 to 500 characters.",
  chat_closed: () => "This stream has ended: its chat is closed.",
  unauthorized: () => "Sign in to chat.",
  suspended: () => "Your account is suspended: you cannot chat.",
  stream_not_found: () => "This stream does not exist.",
  parent_not_found: () => "That message is gone.",
  parent_deleted: () => "That message was deleted.",
};

export function displayName(account, username) {
  return username || `${account.slice(0, 8)}…`;
}

export class ChatPanel {
  // creatorAccount: the stream's creator, who may delete any line of it.
  constructor({ streamId, creatorAccount }) {
    this.streamId = streamId;
    this.creatorAccount = creatorAccount;
    this.log = byId("chat-log");
    this.form = byId("chat-form");
    this.input = byId("chat-input");
    this.errorBox = byId("chat-error");
    this.statusBox = byId("chat-status");
    this.ws = null;
    this.refs = 0;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    byId("chat-reconnect").addEventListener("click", () => this.connect());
    // A fresh socket either way: signed in with the new account, and the
    // history drawn again with the Delete / Report buttons that account gets
    // (the old socket stays signed in as whoever was).
    document.addEventListener("vk:signed-in", () => this.connect());
    document.addEventListener("vk:signed-out", () => this.connect());
  }

  status(text, lost = false) {
    this.statusBox.textContent = text;
    byId("chat-reconnect").hidden = !lost;
    this.log.dataset.state = lost ? "lost" : "open";
  }

  showError(code, message) {
    this.errorBox.dataset.code = code;
    const text = CHAT_TEXT[code];
    this.errorBox.textContent = text ? text(message) : errorText(code, message.message);
  }

  clearError() {
    delete this.errorBox.dataset.code;
    this.errorBox.textContent = "";
  }

  renderInput() {
    const signedIn = Boolean(viewer.load());
    this.input.disabled = !signedIn || !this.ws;
    byId("chat-send").disabled = this.input.disabled;
    byId("chat-sign-in").hidden = signedIn;
  }

  async connect() {
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
      this.ws = null;
    }
    this.renderInput();
    this.status("Connecting to the chat…");
    let ws;
    try {
      ws = await openSocket();
    } catch {
      this.status("The chat could not connect.", true);
      return;
    }
    this.ws = ws;
    ws.onmessage = (event) => {
      let msg = null;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (msg) this.receive(msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.renderInput();
      this.status("The chat connection was lost.", true);
    };
    this.authenticate();
    ws.send(JSON.stringify({ type: "chat_join", stream_id: this.streamId }));
  }

  authenticate() {
    const current = viewer.load();
    if (current && this.ws) this.ws.send(JSON.stringify({ type: "auth", token: current.token }));
    this.renderInput();
  }

  send() {
    const content = this.input.value.trim();
    if (!content || !this.ws) return;
    this.clearError();
    this.refs += 1;
    this.ws.send(JSON.stringify({ type: "chat", stream_id: this.streamId, content,
                                  ref: `c${this.refs}` }));
  }

  receive(msg) {
    switch (msg.type) {
      case "chat_history":
        this.log.replaceChildren();
        for (const line of msg.messages) if (!line.is_deleted) this.addMessage(line);
        byId("chat-empty").hidden = this.log.children.length > 0;
        this.status("In the chat.");
        this.log.dataset.joined = "true";
        break;
      case "chat_message":
        if (msg.stream_id === this.streamId) this.addMessage(msg.message);
        break;
      case "chat_sent":
        this.input.value = "";
        this.addMessage(msg.message);
        break;
      case "chat_deleted":
        this.removeLine(msg.id);
        break;
      case "chat_tip":
        if (msg.stream_id === this.streamId) this.addTip(msg.tip);
        break;
      case "error":
        this.showError(msg.code, msg);
        break;
      default:
        break;  // authenticated, followed_live, …: nothing to show here
    }
  }

  append(item) {
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
    this.log.append(item);
    byId("chat-empty").hidden = true;
    while (this.log.children.length > MAX_LINES) this.log.firstElementChild.remove();
    if (atBottom) this.log.scrollTop = this.log.scrollHeight;
  }

  author(account, username) {
    const name = document.createElement("span");
    name.className = "chat-author";
    name.textContent = displayName(account, username);
    name.title = account;
    return name;
  }

  addMessage(message) {
    if (this.log.querySelector(`[data-id="${CSS.escape(message.id)}"]`)) return;  // sent + echo
    const item = document.createElement("li");
    item.className = "chat-line";
    item.dataset.id = message.id;
    const text = document.createElement("span");
    text.className = "chat-text";
    text.textContent = message.content;
    item.append(this.author(message.author_account, message.author_username), " ", text);
    const me = viewer.load();
    if (me && (me.account === message.author_account || me.account === this.creatorAccount)) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link-button chat-delete";
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", `Delete the message “${message.content.slice(0, 40)}”`);
      remove.addEventListener("click", () => this.deleteLine(message.id));
      item.append(" ", remove);
    } else if (me) {
      item.append(" ", reportButton("comment", message.id, `the message “${message.content.slice(0, 40)}”`));
    }
    this.append(item);
  }

  addTip(tip) {
    if (this.log.querySelector(`[data-tip-id="${CSS.escape(tip.id)}"]`)) return;
    const item = document.createElement("li");
    item.className = "chat-line chat-tip";
    item.dataset.tipId = tip.id;
    const amount = document.createElement("strong");
    amount.className = "chat-tip-amount";
    amount.textContent = amountText(tip.amount);
    item.append(this.author(tip.from_account, tip.from_username), " tipped ", amount);
    if (tip.message) {
      const text = document.createElement("span");
      text.className = "chat-text";
      text.textContent = tip.message;
      item.append(": ", text);
    }
    this.append(item);
  }

  removeLine(id) {
    const line = this.log.querySelector(`[data-id="${CSS.escape(id)}"]`);
    if (line) line.remove();
    byId("chat-empty").hidden = this.log.children.length > 0;
  }

  async deleteLine(id) {
    try {
      await userApi("DELETE", `/api/comments/${id}`);
      this.removeLine(id);  // the chat_deleted event will say the same
    } catch (err) {
      this.showError(err.code || "client_error", { message: err.message });
    }
  }
}
