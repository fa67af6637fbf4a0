"""A tip to a live creator shows in their stream's chat (`chat_tip`,
docs/protocol.md) for everyone in it, on the real signaling app, Postgres and
Redis; a tip to a creator who is not live shows nowhere."""

from __future__ import annotations

from decimal import Decimal

from signaling.tokens import issue_token
from tests.test_community_ws import next_of, signed_in
from tests.test_e2e_browser import ALICE
from tests.test_ws_protocol import SECRET, Harness, ask, h
from vilokanam.balances import credit

__all__ = ["h"]


async def tip(h: Harness, creator_account: str, token: str, amount: str,
              message: str | None) -> dict:
    response = await h.client.post(f"/api/users/{creator_account}/tips",
                                   json={"amount": amount, "message": message},
                                   headers={"Authorization": f"Bearer {token}"})
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def test_a_tip_to_a_live_creator_is_shown_in_the_chat(h: Harness) -> None:
    stream_id, _ = await h.stream()
    creator = await h.db.fetchval(
        "UPDATE users SET is_creator = true, username = 'alice', account_id = $2 FROM streams s "
        "WHERE s.id = $1::uuid AND users.id = s.creator_id RETURNING users.account_id",
        stream_id, ALICE)
    await h.db.execute("UPDATE streams SET status = 'live' WHERE id = $1::uuid", stream_id)
    tipper_id = await h.user()
    await h.db.execute("UPDATE users SET username = '<b>bob</b>' WHERE id = $1::uuid", tipper_id)
    tipper_account = await h.db.fetchval("SELECT account_id FROM users WHERE id = $1::uuid",
                                         tipper_id)
    await credit(h.db, h.redis, tipper_id, Decimal(5), "adjustment", "test funds", 12)
    token = issue_token(SECRET, tipper_id, tipper_account)

    reader = await h.connect()  # reading a chat needs no sign-in
    assert (await ask(reader, {"type": "chat_join", "stream_id": stream_id}))["type"] == \
        "chat_history"
    chatter, _, _ = await signed_in(h)
    assert (await ask(chatter, {"type": "chat_join", "stream_id": stream_id}))["type"] == \
        "chat_history"

    paid = await tip(h, creator, token, "1.25", "great <show>")
    for ws in (reader, chatter):
        shown = await next_of(ws, "chat_tip", "chat_message")
        assert shown == {"type": "chat_tip", "stream_id": stream_id, "tip": {
            "id": paid["id"], "amount": "1.25", "from_account": tipper_account,
            "from_username": "<b>bob</b>", "message": "great <show>",
            "created_at": paid["created_at"]}}

    # Not live any more: the next tip shows nowhere (the next chat line comes first).
    await h.db.execute("UPDATE streams SET status = 'ended' WHERE id = $1::uuid", stream_id)
    await tip(h, creator, token, "0.5", None)
    other_stream, _ = await h.stream()
    assert (await ask(reader, {"type": "chat_join", "stream_id": other_stream}))["type"] == \
        "chat_history"
    await chatter.send_json({"type": "chat", "stream_id": other_stream, "content": "after"})
    after = await next_of(reader, "chat_tip", "chat_message")
    assert after["type"] == "chat_message" and after["message"]["content"] == "after"
    balance = await h.db.fetchval(
        "SELECT COALESCE(sum(amount), 0) FROM payments WHERE from_user_id = $1::uuid "
        "AND payment_type = 'tip'", tipper_id)
    assert balance == Decimal("1.75")
