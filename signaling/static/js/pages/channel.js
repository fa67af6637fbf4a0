// A channel: the profile, live stream, videos and past streams are in the
// HTML (rendered by the server); the page adds the Follow button.

import { config } from "../core.js";
import { followButton } from "../follow.js";

export function channelPage() {
  followButton(config.channelAccount);
}
