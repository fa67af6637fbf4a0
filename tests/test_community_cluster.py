"""Community across processes, as deployed: two signaling servers, two real
SFU workers and billing on one Postgres and Redis. Chat sent on one server
reaches the publisher and the viewers on both and lands in `comments`; a
follower on the other server hears `followed_live` within 2 s; a moderator's
suspension ends a publisher's stream through its worker and disconnects a
viewer on the other server."""

from __future__ import annotations

import time
from decimal import Decimal

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from tests.processes import role_env
from tests.test_cli import run_cli
from tests.test_multiprocess import (
    ALICE,
    BOB,
    Cluster,
    Socket,
    cluster,
    eventually,
    next_message,
)
from vilokanam.balances import credit

__all__ = ["cluster"]

CAROL = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"
DAVE = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"
EVE = "5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw"
FOLLOWED_LIVE_WITHIN_S = 2.0


async def token_of(cluster: Cluster, account: str) -> dict[str, str]:
    return dict(await cluster.post("/api/dev/token", {"account": account}))


async def signed_in(cluster: Cluster, server: int, token: str) -> Socket:
    ws = await cluster.socket(server)
    await ws.send_json({"type": "auth", "token": token})
    assert (await next_message(ws, {"authenticated", "error"}))["type"] == "authenticated"
    return ws


async def join_chat(ws: Socket, stream_id: str) -> None:
    await ws.send_json({"type": "chat_join", "stream_id": stream_id})
    assert (await next_message(ws, {"chat_history", "error"}))["type"] == "chat_history"


async def suspend(cluster: Cluster, server: int, moderator: str, reporter: str,
                  target_type: str, target_id: str) -> None:
    report = await cluster.post("/api/reports", {"target_type": target_type,
                                                 "target_id": target_id, "reason": "spam"},
                                reporter)
    url = cluster.url(f"/api/moderation/reports/{report['id']}", server)
    async with cluster.http.post(url, json={"action": "suspend"},
                                 headers={"Authorization": f"Bearer {moderator}"}) as resp:
        assert resp.status == 200, await resp.text()


async def closed_as_suspended(ws: Socket) -> None:
    told = await next_message(ws, {"error"})
    assert told["code"] == "suspended", told
    while True:  # other messages may still be ahead of the close
        message = await ws.receive(timeout=10)
        if message.type is aiohttp.WSMsgType.CLOSE:
            assert message.data == aiohttp.WSCloseCode.POLICY_VIOLATION
            return
        assert message.type is aiohttp.WSMsgType.TEXT, message


async def test_chat_alerts_and_suspension_cross_signaling_servers(
        cluster: Cluster, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    alice = await token_of(cluster, ALICE)
    bob, carol, dave = [await token_of(cluster, a) for a in (BOB, CAROL, DAVE)]
    stream_id, key = await cluster.stream()  # Alice's

    # Bob follows Alice and waits on server 1, signed in.
    await cluster.post(f"/api/users/{ALICE}/follow", {}, bob["token"])
    follower = await signed_in(cluster, 1, bob["token"])

    # Alice goes live through server 0.
    publisher_ws, _ = await cluster.publish(0, stream_id, key)
    live_at = time.monotonic()
    alert = await next_message(follower, {"followed_live"}, timeout=FOLLOWED_LIVE_WITHIN_S + 1)
    assert time.monotonic() - live_at < FOLLOWED_LIVE_WITHIN_S
    assert (alert["stream_id"], alert["creator_account"]) == (stream_id, ALICE)

    # Dave watches on server 1 (funded), and chats there too.
    await credit(db, redis, dave["user_id"], Decimal(100), "adjustment", "test funds", 12)
    viewer_ws, viewer = await cluster.watch(1, stream_id, dave["token"])
    await viewer.wait_for_frames("video", 5)
    chatter = await signed_in(cluster, 0, carol["token"])
    for ws in (publisher_ws, viewer_ws, follower, chatter):
        await join_chat(ws, stream_id)

    await chatter.send_json({"type": "chat", "stream_id": stream_id, "content": "hi all",
                             "ref": "c1"})
    # The sender's own chat_message may come before or after its chat_sent.
    first = await next_message(chatter, {"chat_sent", "chat_message"})
    second = await next_message(chatter, {"chat_sent", "chat_message"} - {first["type"]})
    sent = (first if first["type"] == "chat_sent" else second)["message"]
    assert (first if first["type"] == "chat_message" else second)["message"] == sent
    for ws in (publisher_ws, viewer_ws, follower):  # both servers
        relayed = await next_message(ws, {"chat_message"})
        assert relayed["message"] == sent
    assert await db.fetchval("SELECT content FROM comments WHERE id = $1::uuid AND "
                             "stream_id = $2::uuid", sent["id"], stream_id) == "hi all"

    # Eve is made a moderator by the operator's command.
    eve = await token_of(cluster, EVE)
    done = run_cli("admin", "moderator", EVE, env=role_env(cluster.signaling[0].settings))
    assert done.returncode == 0, done.stderr
    assert await db.fetchval("SELECT role FROM users WHERE account_id = $1", EVE) == "moderator"

    # A second stream of Alice's, reported and removed: its worker ends it at once.
    other_id, other_key = await cluster.stream()
    other_ws, _ = await cluster.publish(1, other_id, other_key)
    report = await cluster.post("/api/reports", {"target_type": "stream", "target_id": other_id,
                                                 "reason": "violence"}, carol["token"])
    async with cluster.http.post(cluster.url(f"/api/moderation/reports/{report['id']}"),
                                 json={"action": "remove"},
                                 headers={"Authorization": f"Bearer {eve['token']}"}) as resp:
        assert resp.status == 200, await resp.text()
    assert (await next_message(other_ws, {"stream_ended", "error"}))["type"] == "stream_ended"
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                             other_id) == "ended"
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                             stream_id) == "live"  # the other stream is untouched

    # Dave, watching on server 1, is suspended from server 0: disconnected at once.
    await suspend(cluster, 0, eve["token"], carol["token"], "user", DAVE)
    await closed_as_suspended(viewer_ws)

    async def viewer_session_closed() -> bool:
        return not await db.fetchval(
            "SELECT bool_or(is_active) FROM stream_viewers WHERE viewer_id = $1::uuid",
            dave["user_id"])
    await eventually(viewer_session_closed, "Dave's viewing session to end on the worker")

    # Alice, publishing through server 0, is suspended from server 1: her stream ends.
    await suspend(cluster, 1, eve["token"], bob["token"], "stream", stream_id)
    await closed_as_suspended(publisher_ws)

    async def stream_ended() -> bool:
        return await db.fetchval("SELECT status FROM streams WHERE id = $1::uuid",
                                 stream_id) == "ended"
    await eventually(stream_ended, "the suspended creator's stream to end")
    assert await db.fetchval("SELECT end_time FROM stream_sessions WHERE stream_id = $1::uuid",
                             stream_id) is not None
    # And neither can come back.
    async with cluster.http.get(cluster.url("/api/me", 1),
                                headers={"Authorization": f"Bearer {alice['token']}"}) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "suspended"
