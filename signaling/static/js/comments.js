// Threaded comments on a video: newest first, each with its replies
// (GET /api/videos/{id}/comments?parent_id=…), a comment form, Like (its state
// from GET /api/videos/{id}/comment-likes, the count the server's answer),
// Reply, Delete (your own, or any on your video) and Report. Every comment is text
// (textContent), never HTML; errors land next to the field they are about.

import {
  api, byId, clearBox, clearFormErrors, showErrorIn, showFormError, timeText, userApi, viewer,
} from "./core.js";
import { displayName } from "./chat.js";
import { reportButton } from "./reports.js";

const PAGE = 20;
const MAX_DEPTH = 4;  // signaling/community/comments.py: replies nest four levels deep
const FIELDS = { invalid_content: "content", thread_too_deep: "content", parent_deleted: "content",
  parent_not_found: "content" };

export class Comments {
  constructor({ videoId, creatorAccount }) {
    this.videoId = videoId;
    this.creatorAccount = creatorAccount;
    this.list = byId("comment-list");
    this.before = null;
    this.liked = new Set();  // the ids of the comments the signed-in user likes
    const form = byId("comment-form");
    this.wireForm(form, null, (comment) => {
      this.list.prepend(this.item(comment));
      byId("no-comments").hidden = true;
    });
    byId("more-comments").addEventListener("click", () => this.loadPage().catch(() => {}));
    const changed = () => {
      this.render();
      this.reload().catch(() => {});  // Delete / Report buttons depend on who is signed in
    };
    document.addEventListener("vk:signed-in", changed);
    document.addEventListener("vk:signed-out", changed);
    this.render();
  }

  render() {
    const signedIn = Boolean(viewer.load());
    byId("comment-send").disabled = !signedIn;
    byId("comment-input").disabled = !signedIn;
    byId("comment-sign-in").hidden = signedIn;
  }

  // A comment (or reply) form: the server's message next to its text field.
  wireForm(form, parentId, added) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      clearFormErrors(form);
      const input = form.querySelector("[name=content]");
      userApi("POST", `/api/videos/${this.videoId}/comments`, {
        body: { content: input.value, parent_id: parentId },
      }).then((comment) => {
        input.value = "";
        added(comment);
      }).catch((err) => showFormError(form, err, FIELDS));
    });
  }

  async reload() {
    this.before = null;
    this.liked = await this.myLikes();
    this.list.replaceChildren();
    await this.loadPage();
  }

  async myLikes() {
    if (!viewer.load()) return new Set();
    const { comment_ids: ids } = await userApi("GET", `/api/videos/${this.videoId}/comment-likes`);
    return new Set(ids);
  }

  async loadPage() {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (this.before) query.set("before", this.before);
    const page = await api("GET", `/api/videos/${this.videoId}/comments?${query}`);
    for (const comment of page.comments) this.list.append(this.item(comment));
    this.before = page.next_before;
    byId("more-comments").hidden = !this.before;
    byId("no-comments").hidden = this.list.children.length > 0;
  }

  async loadReplies(comment, replies) {
    const query = new URLSearchParams({ limit: "100", parent_id: comment.id });
    const page = await api("GET", `/api/videos/${this.videoId}/comments?${query}`);
    // Oldest first under their parent: a thread reads top to bottom.
    for (const reply of page.comments.reverse()) replies.append(this.item(reply));
  }

  item(comment) {
    const item = document.createElement("li");
    item.className = "comment";
    item.dataset.id = comment.id;
    const meta = document.createElement("p");
    meta.className = "comment-meta";
    const text = document.createElement("p");
    text.className = "comment-text";
    if (comment.is_deleted) {
      meta.textContent = timeText(comment.created_at);
      text.textContent = "(deleted)";
      text.classList.add("muted");
    } else {
      const author = document.createElement("a");
      author.href = `/c/${comment.author_account}`;
      author.className = "comment-author";
      author.textContent = displayName(comment.author_account, comment.author_username);
      meta.append(author, ` · ${timeText(comment.created_at)}`);
      text.textContent = comment.content;
    }
    const replies = document.createElement("ol");
    replies.className = "comment-list";
    replies.setAttribute("aria-label", "Replies");
    item.append(meta, text, this.actions(comment, item, replies), replies);
    if (comment.reply_count) this.loadReplies(comment, replies).catch(() => {});
    return item;
  }

  actions(comment, item, replies) {
    const box = document.createElement("div");
    box.className = "comment-actions";
    if (comment.is_deleted) return box;
    const snippet = `the comment “${comment.content.slice(0, 40)}”`;
    const count = document.createElement("span");
    count.className = "comment-likes";
    const showCount = (n) => {
      count.textContent = `${n} like${n === 1 ? "" : "s"}`;
    };
    showCount(comment.like_count || 0);
    const me = viewer.load();
    if (!me) {
      box.append(count);
      return box;
    }
    box.append(this.likeButton(comment, snippet, showCount), count);
    if (comment.depth < MAX_DEPTH) {
      box.append(this.button("Reply", `Reply to ${snippet}`, "comment-reply",
                             () => this.openReply(comment, item, replies)));
    }
    if (me.account === comment.author_account || me.account === this.creatorAccount) {
      box.append(this.button("Delete", `Delete ${snippet}`, "comment-delete",
                             () => this.remove(comment, item)));
    } else {
      box.append(reportButton("comment", comment.id, snippet));
    }
    return box;
  }

  // Like / Liked (aria-pressed) on a comment; the count is the server's answer.
  likeButton(comment, snippet, showCount) {
    let liked = this.liked.has(comment.id);
    const error = document.createElement("span");
    error.className = "error";
    error.setAttribute("role", "alert");
    const button = this.button("", `Like ${snippet}`, "comment-like", () => {
      clearBox(error);
      userApi(liked ? "DELETE" : "POST", `/api/comments/${comment.id}/like`)
        .then(show)
        .catch((err) => showErrorIn(error, err.code || "client_error", err.message));
    });
    function show(answer) {
      liked = answer.liked;
      button.textContent = liked ? "Liked" : "Like";
      button.setAttribute("aria-pressed", String(liked));
      if (answer.like_count !== undefined) showCount(answer.like_count);
    }
    show({ liked });
    const wrap = document.createElement("span");
    wrap.append(button, error);
    return wrap;
  }

  button(label, ariaLabel, className, action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `link-button ${className}`;
    button.textContent = label;
    button.setAttribute("aria-label", ariaLabel);
    button.addEventListener("click", action);
    return button;
  }

  openReply(comment, item, replies) {
    const existing = item.querySelector(":scope > form");
    if (existing) {
      existing.querySelector("textarea").focus();
      return;
    }
    const form = document.createElement("form");
    form.className = "reply-form";
    const id = `reply-${comment.id}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = "Your reply";
    const input = document.createElement("textarea");
    input.id = id;
    input.name = "content";
    input.maxLength = 5000;
    const fieldError = document.createElement("p");
    fieldError.className = "field-error";
    fieldError.dataset.errorFor = "content";
    const formError = document.createElement("p");
    formError.className = "field-error";
    formError.dataset.errorFor = "";
    const send = document.createElement("button");
    send.type = "submit";
    send.className = "primary";
    send.textContent = "Reply";
    form.append(label, input, fieldError, formError, send);
    item.insertBefore(form, replies);
    this.wireForm(form, comment.id, (reply) => {
      replies.append(this.item(reply));
      form.remove();
    });
    input.focus();
  }

  async remove(comment, item) {
    try {
      await userApi("DELETE", `/api/comments/${comment.id}`);
    } catch (err) {
      showFormError(byId("comment-form"), err);
      return;
    }
    const text = item.querySelector(":scope > .comment-text");
    text.textContent = "(deleted)";
    text.classList.add("muted");
    item.querySelector(":scope > .comment-meta").textContent = "";
    item.querySelector(":scope > .comment-actions").replaceChildren();
  }
}
