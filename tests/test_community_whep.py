"""A suspension ends WHIP and WHEP sessions too (not only websockets): the
real signaling app and a real SFU worker (test_whip_whep's stack), aiortc
clients over plain HTTP, real Postgres and Redis."""

from __future__ import annotations

from signaling.tokens import issue_token
from tests.test_whip_whep import SECRET, Stack, _offer, eventually, stack

__all__ = ["stack"]


async def _suspend(stack: Stack, user_id: str) -> None:
    mod_id = await stack.user()
    await stack.db.execute("UPDATE users SET role = 'moderator' WHERE id = $1::uuid", mod_id)
    report = await stack.db.fetchval(
        "INSERT INTO reports (reporter_id, target_type, target_id, reason) "
        "VALUES ($1::uuid, 'user', $2::uuid, 'spam') RETURNING id::text", mod_id, user_id)
    async with stack.http.post(stack.url(f"/api/moderation/reports/{report}"),
                               json={"action": "suspend"},
                               headers={"Authorization":
                                        f"Bearer {issue_token(SECRET, mod_id, '5Mod')}"}) as resp:
        assert resp.status == 200, await resp.text()


async def test_suspension_ends_whep_viewers_and_whip_publishers(stack: Stack) -> None:
    stream_id, key = await stack.stream()
    publisher, whip = await stack.publish(stream_id, key)
    viewer_id, token = await stack.viewer_token()
    from tests.media_clients import Viewer

    viewer, sessions = Viewer(), []
    try:
        await viewer.start(stack.signal("whep", stream_id, token, sessions))
        await viewer.wait_for_frames("video", 3)
        whep = sessions[0]
        assert (await stack.worker_stats())["viewers"] == 1

        await _suspend(stack, viewer_id)
        await eventually(stack.worker_stats, lambda stats: stats["viewers"] == 0,
                         "the suspended viewer's peer to close")
        await eventually(lambda: stack.request("GET", whep.url), lambda r: r.status == 404,
                         "the WHEP session to be gone")
        again = await stack.post("whep", stream_id, token, await _offer(("video", "audio")))
        assert (again.status, again.json_error()) == (403, "suspended")

        creator = await stack.db.fetchval("SELECT creator_id::text FROM streams "
                                          "WHERE id = $1::uuid", stream_id)
        await _suspend(stack, creator)
        await eventually(lambda: stack.db.fetchval(
            "SELECT status FROM streams WHERE id = $1::uuid", stream_id),
            lambda status: status == "ended", "the suspended creator's stream to end")
        await eventually(lambda: stack.request("GET", whip.url), lambda r: r.status == 404,
                         "the WHIP session to be gone")
        retry = await stack.post("whip", stream_id, key, await _offer(("video", "audio")))
        assert (retry.status, retry.json_error()) == (403, "suspended")
    finally:
        await viewer.close()
        await publisher.close()
    await stack.assert_nothing_left()
