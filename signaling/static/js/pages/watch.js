// The live watch page: the live player (live_player.js: watch, seconds, cost,
// balance, signed delivery receipts, reconnect); beside it the stream's chat
// (chat.js), a Follow button for the creator (follow.js) and a tip form whose
// tip shows in the chat.

import { amountText, byId, config, formHandler, userApi } from "../core.js";
import { ChatPanel } from "../chat.js";
import { followButton } from "../follow.js";
import { livePlayer } from "../live_player.js";
import { refreshBalance } from "../signin.js";

export function watchPage() {
  livePlayer(config.streamId);

  // A tip: out of the balance at once; errors (402 above the balance, a bad
  // amount) next to the amount field.
  const tipForm = byId("tip-form");
  formHandler(tipForm, async (data) => {
    byId("tip-done").textContent = "";
    const tip = await userApi("POST", `/api/users/${config.creatorAccount}/tips`, {
      body: { amount: data.get("amount"), message: data.get("message") || null },
    });
    tipForm.reset();
    byId("tip-done").textContent = `Sent ${amountText(tip.amount)}. Thank you!`;
    refreshBalance().catch(() => {});
  }, { insufficient_funds: "amount", invalid_message: "message", invalid_recipient: "amount" });


  followButton(config.creatorAccount);
  new ChatPanel({ streamId: config.streamId, creatorAccount: config.creatorAccount }).connect();
}
