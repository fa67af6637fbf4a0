// The Follow button of a creator (watch, channel pages): its state from
// GET /api/me/following, a click follows or unfollows (POST / DELETE
// /api/users/{account}/follow) and the follower count is the server's answer.

import { api, byId, showErrorIn, clearBox, userApi, viewer } from "./core.js";

const PAGE = 100;

async function amFollowing(account) {
  for (let offset = 0; ; offset += PAGE) {
    const { users } = await userApi("GET", `/api/me/following?limit=${PAGE}&offset=${offset}`);
    if (users.some((u) => u.account === account)) return true;
    if (users.length < PAGE) return false;
  }
}

// Elements: #follow (button), #follower-count, #follow-error.
export function followButton(account) {
  const button = byId("follow");
  const count = byId("follower-count");
  const errorBox = byId("follow-error");
  let following = false;

  function show(now, followers) {
    following = now;
    button.textContent = following ? "Following" : "Follow";
    button.setAttribute("aria-pressed", String(following));
    if (followers !== undefined) count.textContent = String(followers);
  }

  async function refresh() {
    const me = viewer.load();
    const profile = await api("GET", `/api/users/${account}`);
    // Nobody follows themselves: no button on your own channel.
    button.hidden = Boolean(me) && me.account === account;
    show(me ? await amFollowing(account) : false, profile.follower_count);
  }

  async function toggle() {
    clearBox(errorBox);
    if (!viewer.load()) {
      byId("sign-in-open").click();
      return;
    }
    const answer = await userApi(following ? "DELETE" : "POST", `/api/users/${account}/follow`);
    show(answer.following, answer.follower_count);
  }

  const failed = (err) => showErrorIn(errorBox, err.code || "client_error", err.message);
  button.addEventListener("click", () => toggle().catch(failed));
  document.addEventListener("vk:signed-in", () => refresh().catch(failed));
  document.addEventListener("vk:signed-out", () => refresh().catch(failed));
  refresh().catch(failed);
}
