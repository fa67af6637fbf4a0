"""Chat, sign-in and suspension over `/ws` (docs/protocol.md, "Chat and
alerts") through the real signaling app, Postgres and Redis; the SFU worker is
test_ws_protocol's FakeWorker (the multi-process test runs the real one)."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import WSMsgType

from routing.channels import stream_channel
from signaling.tokens import issue_token
from tests.test_ws_protocol import (
    SECRET,
    TIMEOUT,
    Harness,
    Socket,
    ask,
    error_code,
    h,
    metric,
    watch,
)

__all__ = ["h"]


async def next_of(ws: Socket, *types: str) -> dict[str, Any]:
    """The next message of one of `types`, skipping others (counts and the like)."""
    while True:
        message = dict(await ws.receive_json(timeout=TIMEOUT))
        if message["type"] in types:
            return message


async def signed_in(h: Harness, *, role: str = "user") -> tuple[Socket, str, str]:
    user_id = await h.user()
    await h.db.execute("UPDATE users SET role = $2 WHERE id = $1::uuid", user_id, role)
    account = await h.db.fetchval("SELECT account_id FROM users WHERE id = $1::uuid", user_id)
    token = issue_token(SECRET, user_id, account)
    ws = await h.connect()
    reply = await ask(ws, {"type": "auth", "token": token})
    assert reply == {"type": "authenticated", "user_id": user_id, "account": account}
    return ws, user_id, token


async def test_chat_history_fan_out_and_refusals(h: Harness) -> None:
    stream_id, _ = await h.stream()
    author = await h.user()
    await h.db.execute(
        "INSERT INTO comments (stream_id, author_id, content, created_at) "
        "SELECT $1::uuid, $2::uuid, 'm' || g, now() - (60 - g) * interval '1 second' "
        "FROM generate_series(1, 55) g", stream_id, author)

    reader = await h.connect()
    history = await ask(reader, {"type": "chat_join", "stream_id": stream_id})
    assert history["type"] == "chat_history" and history["stream_id"] == stream_id
    assert [m["content"] for m in history["messages"]] == [f"m{n}" for n in range(6, 56)]
    # Reading needs no sign-in; writing does.
    code = await error_code(reader, {"type": "chat", "stream_id": stream_id, "content": "hi"})
    assert code == "unauthorized"
    assert await error_code(reader, {"type": "auth", "token": "v1.bad.token"}) == "unauthorized"

    writer, writer_id, token = await signed_in(h)
    assert (await ask(writer, {"type": "chat_join", "stream_id": stream_id}))["type"] == \
        "chat_history"
    before = metric("vilokanam_chat_messages_total", front="ws")
    await writer.send_json({"type": "chat", "stream_id": stream_id, "content": "<i>hello</i>",
                            "ref": "r1"})
    # The sender's own chat_message may come before or after its chat_sent.
    replies = {m["type"]: m for m in [await next_of(writer, "chat_sent", "chat_message")
                                      for _ in range(2)]}
    sent = replies["chat_sent"]
    assert sent["ref"] == "r1" and sent["message"]["content"] == "<i>hello</i>"
    for relayed in (await next_of(reader, "chat_message"), replies["chat_message"]):
        assert relayed == {"type": "chat_message", "stream_id": stream_id,
                           "message": sent["message"]}
    assert metric("vilokanam_chat_messages_total", front="ws") == before + 1
    row = await h.db.fetchrow("SELECT author_id::text, content FROM comments WHERE id = $1::uuid",
                              sent["message"]["id"])
    assert tuple(row) == (writer_id, "<i>hello</i>")

    assert await ask(writer, {"type": "chat_leave"}) == {"type": "chat_left",
                                                         "stream_id": stream_id}
    too_long = {"type": "chat", "stream_id": stream_id, "content": "x" * 501}
    assert await error_code(writer, too_long) == "invalid_content"
    for n in range(4):  # the rest of the burst of 5 (the writer left the chat: no echoes)
        await writer.send_json({"type": "chat", "stream_id": stream_id, "content": f"b{n}"})
        assert (await next_of(writer, "chat_sent", "error"))["type"] == "chat_sent"
    await writer.send_json({"type": "chat", "stream_id": stream_id, "content": "flood"})
    refused = await next_of(writer, "error")
    assert refused["code"] == "chat_rate_limited" and refused["retry_after"] >= 1

    # The creator deletes a line over REST: every chatter is told.
    creator = await h.db.fetchval("SELECT creator_id::text FROM streams WHERE id = $1::uuid",
                                  stream_id)
    creator_account = await h.db.fetchval("SELECT account_id FROM users WHERE id = $1::uuid",
                                          creator)
    response = await h.client.delete(
        f"/api/comments/{sent['message']['id']}",
        headers={"Authorization": f"Bearer {issue_token(SECRET, creator, creator_account)}"})
    assert response.status == 200, await response.text()
    deleted = await next_of(reader, "chat_deleted")
    assert deleted == {"type": "chat_deleted", "stream_id": stream_id,
                       "id": sent["message"]["id"]}

    assert await ask(reader, {"type": "chat_leave"}) == {"type": "chat_left",
                                                         "stream_id": stream_id}
    unknown = {"type": "chat_join", "stream_id": "00000000-0000-0000-0000-000000000000"}
    assert await error_code(reader, unknown) == "stream_not_found"
    await h.db.execute("UPDATE streams SET status = 'ended' WHERE id = $1::uuid", stream_id)
    other, _, _ = await signed_in(h)
    closed = {"type": "chat", "stream_id": stream_id, "content": "late"}
    assert await error_code(other, closed) == "chat_closed"


async def test_a_follower_hears_followed_live(h: Harness) -> None:
    stream_id, _ = await h.stream()
    creator = await h.db.fetchval("SELECT creator_id::text FROM streams WHERE id = $1::uuid",
                                  stream_id)
    follower, follower_id, _ = await signed_in(h)
    bystander, _, _ = await signed_in(h)
    await h.db.execute("INSERT INTO follows (follower_id, following_id) "
                       "VALUES ($1::uuid, $2::uuid)", follower_id, creator)
    # What the worker publishes when the stream goes live (test_community_cluster
    # has a real worker do it).
    await h.event(stream_channel(stream_id), type="stream_started", stream_id=stream_id,
                  session_id="s")
    alert = await next_of(follower, "followed_live")
    assert alert["stream_id"] == stream_id and alert["watch_url"].endswith(f"/watch/{stream_id}")
    # The bystander follows nobody: the next thing it hears is its own reply.
    assert (await ask(bystander, {"type": "chat_leave"}))["type"] == "chat_left"


async def _suspend(h: Harness, user_id: str) -> None:
    """A moderator suspends `user_id` over REST, from a report on them."""
    _, mod_id, mod_token = await signed_in(h, role="moderator")
    report_id = await h.db.fetchval(
        "INSERT INTO reports (reporter_id, target_type, target_id, reason) "
        "VALUES ($1::uuid, 'user', $2::uuid, 'spam') RETURNING id::text", mod_id, user_id)
    response = await h.client.post(f"/api/moderation/reports/{report_id}",
                                   json={"action": "suspend"},
                                   headers={"Authorization": f"Bearer {mod_token}"})
    assert response.status == 200, await response.text()


async def _closed_as_suspended(ws: Socket) -> None:
    told = await next_of(ws, "error")
    assert told["code"] == "suspended", told
    closing = await ws.receive(timeout=TIMEOUT)
    assert (closing.type, closing.data, closing.extra) == (
        WSMsgType.CLOSE, aiohttp.WSCloseCode.POLICY_VIOLATION, "suspended"), closing


async def test_suspension_disconnects_a_viewer_and_ends_a_publisher(h: Harness) -> None:
    publisher, stream_id, _ = await h.publishing()
    viewer_id, token = await h.token()
    viewer = await h.connect()
    assert (await ask(viewer, watch(stream_id, token)))["type"] == "answer"
    viewer_peer = h.worker.last_peer

    await _suspend(h, viewer_id)
    await _closed_as_suspended(viewer)
    assert ("DELETE", f"/control/peers/{viewer_peer}") in [
        (m, p) for m, p, _ in h.worker.requests_to("DELETE")]
    # Its token is refused from now on, on the websocket too.
    again = await h.connect()
    assert await error_code(again, {"type": "auth", "token": token}) == "suspended"
    assert await error_code(again, watch(stream_id, token)) == "suspended"

    creator = await h.db.fetchval("SELECT creator_id::text FROM streams WHERE id = $1::uuid",
                                  stream_id)
    # The fake worker writes no lifecycle rows: mark the stream live as the real one does.
    await h.db.execute("UPDATE streams SET status = 'live' WHERE id = $1::uuid", stream_id)
    await _suspend(h, creator)
    await _closed_as_suspended(publisher)
    assert await h.db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                               stream_id) == "ended"
    key = await h.stream_key(stream_id)
    retry = await h.connect()
    code = await error_code(retry, {"type": "publish", "stream_id": stream_id,
                                    "stream_key": key, "sdp": "v=0"})
    assert code == "suspended"


async def test_odd_chat_messages_are_refused_with_a_code(h: Harness) -> None:
    stream_id, _ = await h.stream()
    ws, _, _ = await signed_in(h)
    odd: list[Any] = [None, 5, [], {}, "", "\x00", "x" * 600]
    for field in ("content", "parent_id", "ref", "stream_id"):
        for value in odd:
            message = {"type": "chat", "stream_id": stream_id, "content": "ok", field: value}
            if field == "content" or (field == "parent_id" and value is None):
                message["content"] = value if field == "content" else "fine"
            await ws.send_json(message)
            reply = await next_of(ws, "chat_sent", "error")
            assert reply.get("code") != "internal_error", (field, value, reply)
    for message in ({"type": "chat_join"}, {"type": "chat_join", "stream_id": 5},
                    {"type": "auth"}, {"type": "auth", "token": ["x"]}):
        assert await error_code(ws, message) == "bad_request"


async def test_publishers_and_viewers_hear_their_streams_chat_once(h: Harness) -> None:
    publisher, stream_id, _ = await h.publishing()
    viewer_id, token = await h.token()
    viewer = await h.connect()
    assert (await ask(viewer, watch(stream_id, token)))["type"] == "answer"
    joined = await h.connect()  # watching AND in the chat: one copy
    _, other_token = await h.token()
    assert (await ask(joined, watch(stream_id, other_token)))["type"] == "answer"
    assert (await ask(joined, {"type": "chat_join", "stream_id": stream_id}))["type"] == \
        "chat_history"

    account = await h.db.fetchval("SELECT account_id FROM users WHERE id = $1::uuid", viewer_id)
    for content in ("one", "two"):
        response = await h.client.post(
            f"/api/streams/{stream_id}/comments", json={"content": content},
            headers={"Authorization": f"Bearer {issue_token(SECRET, viewer_id, account)}"})
        assert response.status == 201, await response.text()
    for ws in (publisher, viewer, joined):
        got = [(await next_of(ws, "chat_message"))["message"]["content"] for _ in range(2)]
        assert got == ["one", "two"]  # "two" right after "one": no duplicate between
