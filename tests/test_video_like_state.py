"""`GET /api/videos/{id}/like`: whether the caller likes a video, and its count,
as the like and unlike leave them (the video page's button after a reload)."""

from __future__ import annotations

from signaling.tokens import issue_token
from tests.test_ws_protocol import SECRET, Harness, h

__all__ = ["h"]


async def test_the_like_state_follows_like_and_unlike(h: Harness) -> None:
    creator = await h.user()
    video = await h.db.fetchval(
        "INSERT INTO videos (creator_id, title, status) VALUES ($1::uuid, 'v', 'ready') "
        "RETURNING id::text", creator)
    fan = await h.user()
    auth = {"Authorization": f"Bearer {issue_token(SECRET, fan, '5Fan')}"}

    async def state() -> dict:
        response = await h.client.get(f"/api/videos/{video}/like", headers=auth)
        assert response.status == 200
        return dict(await response.json())

    assert await state() == {"liked": False, "like_count": 0}
    assert (await h.client.post(f"/api/videos/{video}/like", headers=auth)).status == 200
    assert await state() == {"liked": True, "like_count": 1}
    assert (await h.client.delete(f"/api/videos/{video}/like", headers=auth)).status == 200
    assert await state() == {"liked": False, "like_count": 0}

    assert (await h.client.get(f"/api/videos/{video}/like")).status == 401
    unknown = await h.client.get("/api/videos/00000000-0000-0000-0000-000000000000/like",
                                 headers=auth)
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "video_not_found"
    bad = await h.client.get("/api/videos/nope/like", headers=auth)
    assert bad.status == 400
