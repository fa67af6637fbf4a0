// A channel: the profile, live stream, videos and past streams are in the
// HTML (rendered by the server); the page adds the Follow button and, when the
// channel is live, the watch page's live player (live_player.js): the price is
// shown and nothing is billed until the viewer presses Watch.

import { config } from "../core.js";
import { followButton } from "../follow.js";
import { livePlayer } from "../live_player.js";

export function channelPage() {
  followButton(config.channelAccount);
  if (config.streamId) livePlayer(config.streamId);
}
