"""Community REST routes against real Postgres and Redis: profiles,
categories, follows, chat and video comments, likes (exact under concurrent
requests), reports, moderation, the dashboard. Each error has its code."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientSession

from tests.api_client import ALICE_42, BOB_42, Client, bearer, create_stream, error_of, login
from tests.test_migrations import fresh_db
from vilokanam.migrations import migrate

__all__ = ["fresh_db"]

CAROL = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"  # //Charlie
DAVE = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"  # //Dave
EVE = "5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw"  # //Eve


async def moderator(client: Client, db: asyncpg.Connection, account: str = EVE) -> str:
    token = (await login(client, account))["token"]
    await db.execute("UPDATE users SET role = 'moderator' WHERE account_id = $1", account)
    return token


async def ready_video(db: asyncpg.Connection, creator_id: str, title: str = "clip",
                      status: str = "ready") -> str:
    return str(await db.fetchval(
        "INSERT INTO videos (creator_id, title, status, published_at) "
        "VALUES ($1::uuid, $2, $3, now()) RETURNING id::text", creator_id, title, status))


# -- categories ----------------------------------------------------------------------

async def test_categories_are_seeded_and_moderators_add_more(client: Client,
                                                             db: asyncpg.Connection) -> None:
    # The harness empties every table, so the seed is re-applied from the migration here.
    await db.execute("INSERT INTO categories (name, description) VALUES ('Gaming', 'g')")
    listed = await (await client.get("/api/categories")).json()
    assert [c["name"] for c in listed["categories"]] == ["Gaming"]
    assert set(listed["categories"][0]) == {"id", "name", "description"}

    user = (await login(client, BOB_42))["token"]
    response = await client.post("/api/categories", json={"name": "Cooking"},
                                 headers=bearer(user))
    assert await error_of(response, 403) == "not_moderator"
    mod = await moderator(client, db)
    response = await client.post("/api/categories", json={"name": "Cooking",
                                                          "description": "food"},
                                 headers=bearer(mod))
    assert response.status == 201
    assert (await response.json())["name"] == "Cooking"
    response = await client.post("/api/categories", json={"name": "gaming"},
                                 headers=bearer(mod))
    assert await error_of(response, 409) == "category_exists"
    response = await client.post("/api/categories", json={"name": ""}, headers=bearer(mod))
    assert await error_of(response, 400) == "invalid_name"


async def test_the_migrations_seed_categories_and_fold_case(fresh_db: str) -> None:
    """On a database the migrations just made (the harness's is emptied per test)."""
    await migrate(fresh_db)
    conn = await asyncpg.connect(fresh_db)
    try:
        names = {r["name"] for r in await conn.fetch("SELECT name FROM categories")}
        assert {"Gaming", "Music", "Education", "Just Chatting"} <= names
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO categories (name) VALUES ('gaming')")
        await conn.execute("INSERT INTO users (account_id, username) VALUES ('a', 'Ann')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO users (account_id, username) VALUES ('b', 'aNN')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET role = 'admin'")
    finally:
        await conn.close()


# -- profiles ------------------------------------------------------------------------

async def test_profile_edit_and_public_view(client: Client, db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    await login(client, BOB_42)
    response = await client.patch("/api/me", json={
        "username": "Alice_1", "bio": "<b>hi</b>", "email": "alice@example.org",
        "profile_image_url": "https://img.example.org/a.png"}, headers=bearer(alice["token"]))
    assert response.status == 200, await response.text()
    mine = await response.json()
    assert mine["email"] == "alice@example.org" and mine["username"] == "Alice_1"

    public = await (await client.get(f"/api/users/{ALICE_42}")).json()
    assert "email" not in public
    assert public["bio"] == "<b>hi</b>"  # stored as given; pages render text
    assert {"account", "username", "bio", "profile_image_url", "is_creator",
            "follower_count", "following_count"} <= set(public)

    bob = (await login(client, BOB_42))["token"]
    response = await client.patch("/api/me", json={"username": "alice_1"}, headers=bearer(bob))
    assert await error_of(response, 409) == "username_taken"
    response = await client.patch("/api/me", json={"email": "ALICE@example.org"},
                                  headers=bearer(bob))
    assert await error_of(response, 409) == "email_taken"
    for body, code in [({"username": "ab"}, "invalid_username"),
                       ({"username": "x" * 51}, "invalid_username"),
                       ({"username": "a b c"}, "invalid_username"),
                       ({"profile_image_url": "javascript:alert(1)"},
                        "invalid_profile_image_url"),
                       ({"email": "nope"}, "invalid_email"), ({}, "nothing_to_change"),
                       ({"bio": "x" * 1001}, "invalid_bio")]:
        response = await client.patch("/api/me", json=body, headers=bearer(bob))
        assert await error_of(response, 400) == code, body
    assert await error_of(await client.get(f"/api/users/{CAROL}"), 404) == "user_not_found"
    assert await error_of(await client.get("/api/users/nope"), 400) == "invalid_account"
    response = await client.patch("/api/me", json={"bio": "x"})
    assert await error_of(response, 401) == "unauthorized"


# -- follows -------------------------------------------------------------------------

async def test_follow_is_idempotent_counted_and_not_yourself(client: Client,
                                                             db: asyncpg.Connection) -> None:
    alice = (await login(client, ALICE_42))["token"]
    bob = (await login(client, BOB_42))["token"]
    stream = await create_stream(client, alice)
    await db.execute("UPDATE streams SET status = 'live' WHERE id = $1::uuid", stream["id"])

    for _ in range(2):
        response = await client.post(f"/api/users/{ALICE_42}/follow", headers=bearer(bob))
        assert response.status == 200
        assert await response.json() == {"following": True, "follower_count": 1}
    assert await db.fetchval("SELECT count(*) FROM follows") == 1
    response = await client.post(f"/api/users/{ALICE_42}/follow", headers=bearer(alice))
    assert await error_of(response, 400) == "cannot_follow_self"
    response = await client.post(f"/api/users/{CAROL}/follow", headers=bearer(bob))
    assert await error_of(response, 404) == "user_not_found"

    profile = await (await client.get(f"/api/users/{ALICE_42}")).json()
    assert (profile["follower_count"], profile["live_stream_id"]) == (1, stream["id"])
    following = await (await client.get("/api/me/following", headers=bearer(bob))).json()
    assert [u["account"] for u in following["users"]] == [ALICE_42]
    followers = await (await client.get(f"/api/users/{ALICE_42}/followers")).json()
    assert [u["account"] for u in followers["users"]] == [BOB_42]

    alice_id = await db.fetchval("SELECT id::text FROM users WHERE account_id = $1", ALICE_42)
    video = await ready_video(db, alice_id)
    feed = await (await client.get("/api/me/feed", headers=bearer(bob))).json()
    assert [s["id"] for s in feed["live"]] == [stream["id"]]
    assert [v["id"] for v in feed["videos"]] == [video]

    for _ in range(2):
        response = await client.delete(f"/api/users/{ALICE_42}/follow", headers=bearer(bob))
        assert await response.json() == {"following": False, "follower_count": 0}
    assert await db.fetchval("SELECT count(*) FROM follows") == 0


# -- chat over REST ----------------------------------------------------------------------

async def test_stream_chat_over_rest(client: Client, db: asyncpg.Connection) -> None:
    alice = (await login(client, ALICE_42))["token"]
    bob = (await login(client, BOB_42))["token"]
    stream = await create_stream(client, alice)
    path = f"/api/streams/{stream['id']}/comments"

    response = await client.post(path, json={"content": "<script>x</script>"},
                                 headers=bearer(bob))
    assert response.status == 201, await response.text()
    first = await response.json()
    assert {"id", "content", "author_account", "created_at", "parent_id"} <= set(first)
    assert (first["content"], first["author_account"]) == ("<script>x</script>", BOB_42)
    row = await db.fetchrow("SELECT content, stream_id::text FROM comments")
    assert tuple(row) == ("<script>x</script>", stream["id"])

    for body, code in [({"content": ""}, "invalid_content"),
                       ({"content": "   "}, "invalid_content"),
                       ({"content": "x" * 501}, "invalid_content"),
                       ({"content": 5}, "invalid_content")]:
        assert await error_of(await client.post(path, json=body, headers=bearer(bob)),
                              400) == code
    assert await error_of(await client.post(path, json={"content": "hi"}), 401) == "unauthorized"
    unknown = "/api/streams/00000000-0000-0000-0000-000000000000/comments"
    response = await client.post(unknown, json={"content": "hi"}, headers=bearer(bob))
    assert await error_of(response, 404) == "stream_not_found"

    # Bob's burst: 5 in total, one already spent.
    for n in range(4):
        response = await client.post(path, json={"content": f"m{n}"}, headers=bearer(bob))
        assert response.status == 201, await response.text()
    response = await client.post(path, json={"content": "flood"}, headers=bearer(bob))
    assert await error_of(response, 429) == "chat_rate_limited"
    assert int(response.headers["Retry-After"]) >= 1
    # Another user has a bucket of their own.
    response = await client.post(path, json={"content": "mine"}, headers=bearer(alice))
    assert response.status == 201

    page = await (await client.get(f"{path}?limit=3")).json()
    assert [c["content"] for c in page["comments"]] == ["mine", "m3", "m2"]
    older = await (await client.get(f"{path}?limit=3&before={page['next_before']}")).json()
    assert [c["content"] for c in older["comments"]] == ["m1", "m0", "<script>x</script>"]

    await db.execute("UPDATE streams SET status = 'ended' WHERE id = $1::uuid", stream["id"])
    response = await client.post(path, json={"content": "late"}, headers=bearer(alice))
    assert await error_of(response, 409) == "chat_closed"


# -- comments on videos ------------------------------------------------------------------

async def test_threaded_video_comments_and_soft_delete(client: Client,
                                                       db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    bob = (await login(client, BOB_42))["token"]
    carol = (await login(client, CAROL))["token"]
    video = await ready_video(db, alice["user_id"])
    path = f"/api/videos/{video}/comments"

    async def post(token: str, content: str, parent: str | None = None) -> dict[str, Any]:
        response = await client.post(path, json={"content": content, "parent_id": parent},
                                     headers=bearer(token))
        assert response.status == 201, await response.text()
        return dict(await response.json())

    top = await post(bob, "top")
    chain = [top]
    for depth in range(1, 5):
        chain.append(await post(carol, f"reply {depth}", chain[-1]["id"]))
    assert chain[-1]["depth"] == 4
    response = await client.post(path, json={"content": "too deep", "parent_id": chain[-1]["id"]},
                                 headers=bearer(bob))
    assert await error_of(response, 400) == "thread_too_deep"
    other = await ready_video(db, alice["user_id"], "other")
    response = await client.post(f"/api/videos/{other}/comments",
                                 json={"content": "x", "parent_id": top["id"]},
                                 headers=bearer(bob))
    assert await error_of(response, 404) == "parent_not_found"

    count = "SELECT comment_count FROM videos WHERE id = $1::uuid"
    assert await db.fetchval(count, video) == 5

    # Carol may not delete Bob's comment; the video's creator may.
    response = await client.delete(f"/api/comments/{top['id']}", headers=bearer(carol))
    assert await error_of(response, 403) == "forbidden"
    response = await client.delete(f"/api/comments/{top['id']}", headers=bearer(alice["token"]))
    deleted = await response.json()
    assert (deleted["is_deleted"], deleted["content"], deleted["author_account"]) == (
        True, None, None)
    await client.delete(f"/api/comments/{top['id']}", headers=bearer(alice["token"]))
    assert await db.fetchval(count, video) == 4  # once, though deleted twice
    response = await client.post(path, json={"content": "x", "parent_id": top["id"]},
                                 headers=bearer(bob))
    assert await error_of(response, 409) == "parent_deleted"

    listed = await (await client.get(path)).json()
    assert [(c["id"], c["is_deleted"], c["reply_count"]) for c in listed["comments"]] == [
        (top["id"], True, 1)]  # the thread keeps its shape
    replies = await (await client.get(f"{path}?parent_id={top['id']}")).json()
    assert [c["content"] for c in replies["comments"]] == ["reply 1"]

    # The rows agree with the count.
    live = await db.fetchval("SELECT count(*) FROM comments WHERE video_id = $1::uuid "
                             "AND NOT is_deleted", video)
    assert live == await db.fetchval(count, video)

    archived = await ready_video(db, alice["user_id"], "gone", status="archived")
    response = await client.post(f"/api/videos/{archived}/comments", json={"content": "x"},
                                 headers=bearer(bob))
    assert await error_of(response, 409) == "video_unavailable"
    response = await client.get("/api/videos/00000000-0000-0000-0000-000000000000/comments")
    assert await error_of(response, 404) == "video_not_found"
    response = await client.delete("/api/comments/nope", headers=bearer(bob))
    assert await error_of(response, 400) == "invalid_comment_id"


# -- likes -----------------------------------------------------------------------------

async def test_concurrent_likes_keep_counts_exact(client: Client,
                                                  db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    video = await ready_video(db, alice["user_id"])
    # 30 users; each likes 3 times at once (and the comment too), over real HTTP.
    tokens = [(await login(client, account))["token"] for account in await _accounts(30)]
    comment = await (await client.post(f"/api/videos/{video}/comments",
                                       json={"content": "like me"},
                                       headers=bearer(tokens[0]))).json()
    url = str(client.make_url("/"))
    from prometheus_client import REGISTRY

    def likes_counted() -> float:
        return REGISTRY.get_sample_value("vilokanam_likes_total",
                                         {"target": "video", "change": "like"}) or 0.0
    counted = likes_counted()
    async with ClientSession() as http:
        async def like(path: str, token: str, method: str = "POST") -> int:
            async with http.request(method, url + path, headers=bearer(token)) as resp:
                assert resp.status == 200, await resp.text()
                return int((await resp.json())["like_count"])
        await asyncio.gather(*[like(f"api/videos/{video}/like", t)
                               for t in tokens for _ in range(3)],
                             *[like(f"api/comments/{comment['id']}/like", t)
                               for t in tokens for _ in range(3)])
        assert await db.fetchval("SELECT like_count FROM videos WHERE id = $1::uuid",
                                 video) == 30
        assert await db.fetchval("SELECT count(*) FROM video_likes") == 30
        assert likes_counted() == counted + 30  # 90 requests, 30 changes
        assert await db.fetchval("SELECT like_count FROM comments WHERE id = $1::uuid",
                                 comment["id"]) == 30
        # Half unlike, twice each, at once, while the others like again.
        await asyncio.gather(*[like(f"api/videos/{video}/like", t, "DELETE")
                               for t in tokens[:15] for _ in range(2)],
                             *[like(f"api/videos/{video}/like", t) for t in tokens[15:]])
    assert await db.fetchval("SELECT like_count FROM videos WHERE id = $1::uuid", video) == 15
    assert await db.fetchval("SELECT count(*) FROM video_likes") == 15

    response = await client.post("/api/videos/00000000-0000-0000-0000-000000000000/like",
                                 headers=bearer(tokens[0]))
    assert await error_of(response, 404) == "video_not_found"
    await client.delete(f"/api/comments/{comment['id']}", headers=bearer(tokens[0]))
    response = await client.post(f"/api/comments/{comment['id']}/like", headers=bearer(tokens[1]))
    assert await error_of(response, 409) == "comment_unavailable"


async def test_a_user_learns_which_comments_of_a_video_they_like(
        client: Client, db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    bob = (await login(client, BOB_42))["token"]
    video = await ready_video(db, alice["user_id"])
    other_video = await ready_video(db, alice["user_id"], "other")

    async def comment(on: str, text: str) -> str:
        response = await client.post(f"/api/videos/{on}/comments", json={"content": text},
                                     headers=bearer(alice["token"]))
        return str((await response.json())["id"])

    first, second, third = [await comment(video, t) for t in ("one", "two", "three")]
    elsewhere = await comment(other_video, "elsewhere")
    for liked in (first, third, elsewhere):
        assert (await client.post(f"/api/comments/{liked}/like", headers=bearer(bob))).status == 200
    mine = f"/api/videos/{video}/comment-likes"

    async def liked_ids(token: str) -> list[str]:
        response = await client.get(mine, headers=bearer(token))
        assert response.status == 200, await response.text()
        return list((await response.json())["comment_ids"])

    assert await liked_ids(bob) == [third, first]  # newest first; not the other video's
    assert await liked_ids(alice["token"]) == []  # likes are each user's own
    await client.delete(f"/api/comments/{third}/like", headers=bearer(bob))
    assert await liked_ids(bob) == [first]
    assert second not in await liked_ids(bob)
    assert await error_of(await client.get(mine), 401) == "unauthorized"
    response = await client.get("/api/videos/00000000-0000-0000-0000-000000000000/comment-likes",
                                headers=bearer(bob))
    assert await error_of(response, 404) == "video_not_found"
    response = await client.get("/api/videos/x/comment-likes", headers=bearer(bob))
    assert response.status == 400


async def _accounts(n: int) -> list[str]:
    from vilokanam.accounts import address_of

    return [address_of(f"//Liker{i}") for i in range(n)]


# -- reports and moderation ------------------------------------------------------------

async def test_reports_and_the_moderation_queue(client: Client,
                                                db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    bob = (await login(client, BOB_42))["token"]
    video = await ready_video(db, alice["user_id"])
    comment = await (await client.post(f"/api/videos/{video}/comments", json={"content": "rude"},
                                       headers=bearer(alice["token"]))).json()

    async def report(body: dict[str, Any], token: str = bob) -> Any:
        return await client.post("/api/reports", json=body, headers=bearer(token))

    response = await report({"target_type": "comment", "target_id": comment["id"],
                             "reason": "harassment", "description": "mean"})
    assert response.status == 201, await response.text()
    filed = await response.json()
    assert filed["status"] == "pending"
    response = await report({"target_type": "comment", "target_id": comment["id"],
                             "reason": "spam"})
    assert await error_of(response, 409) == "already_reported"
    user_report = await (await report({"target_type": "user", "target_id": ALICE_42,
                                       "reason": "spam"})).json()
    video_report = await (await report({"target_type": "video", "target_id": video,
                                        "reason": "copyright"})).json()
    for body, status, code in [
            ({"target_type": "planet", "target_id": video, "reason": "spam"}, 400,
             "invalid_target_type"),
            ({"target_type": "video", "target_id": video, "reason": "boring"}, 400,
             "invalid_reason"),
            ({"target_type": "video", "target_id": "00000000-0000-0000-0000-000000000000",
              "reason": "spam"}, 404, "target_not_found"),
            ({"target_type": "stream", "target_id": "x", "reason": "spam"}, 400,
             "invalid_target_id")]:
        assert await error_of(await report(body), status) == code

    queue = "/api/moderation/reports"
    assert await error_of(await client.get(queue, headers=bearer(bob)), 403) == "not_moderator"
    mod = await moderator(client, db)
    pending = await (await client.get(queue, headers=bearer(mod))).json()
    assert [r["id"] for r in pending["reports"]] == [filed["id"], user_report["id"],
                                                      video_report["id"]]
    # /api/me tells a moderator (only) how many reports wait: the navigation's count.
    me = await (await client.get("/api/me", headers=bearer(mod))).json()
    assert (me["is_moderator"], me["open_reports"]) == (True, 3)
    me = await (await client.get("/api/me", headers=bearer(bob))).json()
    assert (me["is_moderator"], me["open_reports"]) == (False, None)
    assert [r["target"] for r in pending["reports"]] == [
        {"owner_account": ALICE_42, "text": "rude", "state": "visible"},
        {"owner_account": ALICE_42, "text": None, "state": "active"},
        {"owner_account": ALICE_42, "text": "clip", "state": "ready"}]

    act = f"{queue}/{filed['id']}"
    response = await client.post(act, json={"action": "remove"}, headers=bearer(bob))
    assert await error_of(response, 403) == "not_moderator"
    response = await client.post(act, json={"action": "explode"}, headers=bearer(mod))
    assert await error_of(response, 400) == "invalid_action"
    response = await client.post(act, json={"action": "remove"}, headers=bearer(mod))
    assert response.status == 200, await response.text()
    acted = await response.json()
    me = await (await client.get("/api/me", headers=bearer(mod))).json()
    assert me["open_reports"] == 2  # the one acted on left the queue
    assert (acted["status"], acted["action"], acted["reviewed_by_account"]) == (
        "action_taken", "remove", EVE)
    assert acted["reviewed_at"] is not None
    assert await db.fetchval("SELECT is_deleted FROM comments WHERE id = $1::uuid",
                             comment["id"]) is True
    assert await db.fetchval("SELECT comment_count FROM videos WHERE id = $1::uuid", video) == 0
    response = await client.post(act, json={"action": "dismiss"}, headers=bearer(mod))
    assert await error_of(response, 409) == "already_reviewed"

    response = await client.post(f"{queue}/{video_report['id']}", json={"action": "remove"},
                                 headers=bearer(mod))
    assert response.status == 200
    assert await db.fetchval("SELECT status FROM videos WHERE id = $1::uuid",
                             video) == "archived"

    response = await client.post(f"{queue}/{user_report['id']}", json={"action": "remove"},
                                 headers=bearer(mod))
    assert await error_of(response, 400) == "invalid_action"
    response = await client.post(f"{queue}/{user_report['id']}", json={"action": "suspend"},
                                 headers=bearer(mod))
    assert response.status == 200, await response.text()
    # Suspended at once: the token Alice holds is refused, and so is a new login.
    response = await client.get("/api/me", headers=bearer(alice["token"]))
    assert await error_of(response, 403) == "suspended"
    response = await client.post("/api/dev/token", json={"account": ALICE_42})
    assert await error_of(response, 403) == "suspended"
    response = await client.post("/api/streams", json={"title": "back"},
                                 headers=bearer(alice["token"]))
    assert await error_of(response, 403) == "suspended"
    assert (await (await client.get(queue, headers=bearer(mod))).json())["reports"] == []
    done = await (await client.get(f"{queue}?status=action_taken",
                                   headers=bearer(mod))).json()
    assert [r["target"]["state"] for r in done["reports"]] == ["deleted", "suspended",
                                                               "archived"]
    response = await client.get(f"{queue}?status=nope", headers=bearer(mod))
    assert await error_of(response, 400) == "invalid_status"


# -- dashboard and analytics -------------------------------------------------------------

async def test_dashboard_numbers_equal_sums_over_the_rows(client: Client,
                                                          db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    bob = await login(client, BOB_42)
    response = await client.get("/api/me/dashboard", headers=bearer(bob["token"]))
    assert await error_of(response, 403) == "not_a_creator"

    streams = [(await create_stream(client, alice["token"], title=f"s{n}"))["id"]
               for n in range(3)]
    videos = [await ready_video(db, alice["user_id"], f"v{n}") for n in range(2)]
    await ready_video(db, alice["user_id"], "draft", status="processing")
    for stream_id, viewers in zip(streams, (4, 7, 1), strict=True):
        await db.execute("UPDATE streams SET viewer_count = $2, start_time = now() "
                         "WHERE id = $1::uuid", stream_id, viewers)
    for video_id, views in zip(videos, (10, 20), strict=True):
        await db.execute("UPDATE videos SET view_count = $2 WHERE id = $1::uuid",
                         video_id, views)
    await db.execute("INSERT INTO creator_earnings (creator_id, total_earnings, pending_payout)"
                     " VALUES ($1::uuid, 12.5, 2.25)", alice["user_id"])
    # Two streams sampled in the same minutes: 3 samples of each per minute.
    for second, (a, b) in enumerate([(2, 5), (3, 4), (1, 6)]):
        for stream_id, viewers in ((streams[0], a), (streams[1], b)):
            await db.execute("INSERT INTO stream_analytics (stream_id, timestamp, viewer_count) "
                             "VALUES ($1::uuid, date_trunc('minute', now()) + $2 * "
                             "interval '10 seconds', $3)", stream_id, second, viewers)
    await db.execute("INSERT INTO follows (follower_id, following_id) "
                     "VALUES ($1::uuid, $2::uuid)", bob["user_id"], alice["user_id"])

    body = await (await client.get("/api/me/dashboard", headers=bearer(alice["token"]))).json()
    sums = await db.fetchrow(
        """SELECT (SELECT count(*) FROM videos WHERE creator_id = $1::uuid AND status = 'ready')
                  AS videos,
                  (SELECT sum(view_count) FROM videos WHERE creator_id = $1::uuid
                     AND status = 'ready') AS views,
                  (SELECT count(*) FROM streams WHERE creator_id = $1::uuid) AS streams,
                  (SELECT sum(viewer_count) FROM streams WHERE creator_id = $1::uuid) AS viewers
        """, alice["user_id"])
    assert (body["total_videos"], body["total_video_views"], body["total_streams"],
            body["total_stream_viewers"]) == (sums["videos"], sums["views"], sums["streams"],
                                              sums["viewers"]) == (2, 30, 3, 12)
    assert (body["total_earnings"], body["pending_payout"]) == ("12.5", "2.25")
    assert Decimal(body["total_earnings"]) == Decimal("12.5")
    assert body["follower_count"] == 1
    # Per minute: each stream's peak (3 and 6), summed.
    assert [(p["viewers"], p["streams"]) for p in body["viewers_over_time"]] == [(9, 2)]

    response = await client.get(f"/api/videos/{videos[1]}/analytics",
                                headers=bearer(alice["token"]))
    analytics = await response.json()
    assert (analytics["view_count"], analytics["like_count"], analytics["comment_count"]) == (
        20, 0, 0)
    response = await client.get(f"/api/videos/{videos[1]}/analytics",
                                headers=bearer(bob["token"]))
    assert await error_of(response, 403) == "forbidden"
    response = await client.get("/api/me/dashboard?hours=0", headers=bearer(alice["token"]))
    assert await error_of(response, 400) == "invalid_hours"


async def test_a_stream_has_a_category_and_lists_filter_by_it(client: Client,
                                                              db: asyncpg.Connection) -> None:
    music = await db.fetchval("INSERT INTO categories (name) VALUES ('Music') RETURNING id::text")
    await db.execute("INSERT INTO categories (name) VALUES ('Art')")
    alice = (await login(client, ALICE_42))["token"]
    bob = (await login(client, BOB_42))["token"]
    by_name = await create_stream(client, alice, category="music")
    assert (by_name["category_id"], by_name["category"]) == (music, "Music")
    by_id = await create_stream(client, bob, category=music)
    assert by_id["category"] == "Music"
    plain = await create_stream(client, alice)
    assert (plain["category_id"], plain["category"]) == (None, None)
    response = await client.post("/api/streams", json={"title": "x", "category": "Cooking"},
                                 headers=bearer(alice))
    assert await error_of(response, 400) == "unknown_category"

    async def ids(query: str) -> set[str]:
        response = await client.get(f"/api/streams?{query}")
        assert response.status == 200, await response.text()
        return {s["id"] for s in (await response.json())["streams"]}
    assert await ids("category=Music") == {by_name["id"], by_id["id"]}
    assert await ids("category=art") == set()
    assert await ids(f"creator={ALICE_42}") == {by_name["id"], plain["id"]}
    assert await ids(f"category={music}&creator={BOB_42}") == {by_id["id"]}
    response = await client.get("/api/streams?category=nope")
    assert await error_of(response, 400) == "unknown_category"


async def test_counters_and_logs_without_the_email(client: Client, db: asyncpg.Connection,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import REGISTRY

    def metric(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    alice = await login(client, ALICE_42)
    bob = (await login(client, BOB_42))["token"]
    follows = metric("vilokanam_follows_total", change="follow")
    reports = metric("vilokanam_reports_total", target_type="user")
    chats = metric("vilokanam_chat_messages_total", front="rest")
    await client.post(f"/api/users/{ALICE_42}/follow", headers=bearer(bob))
    await client.post(f"/api/users/{ALICE_42}/follow", headers=bearer(bob))  # no change
    await client.post("/api/reports", json={"target_type": "user", "target_id": ALICE_42,
                                            "reason": "spam"}, headers=bearer(bob))
    stream = await create_stream(client, alice["token"])
    await client.post(f"/api/streams/{stream['id']}/comments", json={"content": "hi"},
                      headers=bearer(bob))
    assert metric("vilokanam_follows_total", change="follow") == follows + 1
    assert metric("vilokanam_reports_total", target_type="user") == reports + 1
    assert metric("vilokanam_chat_messages_total", front="rest") == chats + 1

    caplog.set_level("INFO")
    response = await client.patch("/api/me", json={"email": "secret.person@example.org"},
                                  headers=bearer(bob))
    assert response.status == 200
    lines = [f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records]
    assert any("profile.updated" in line and "email" in line for line in lines)  # the field
    assert not any("secret.person" in line for line in lines)  # never its value


def _image(codec: str, pix_fmt: str, fmt: str = "image2pipe", side: int = 32) -> bytes:
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream(codec)
        stream.width, stream.height, stream.pix_fmt = side, side, pix_fmt
        frame = av.VideoFrame(side, side, "rgb24").reformat(format=pix_fmt)
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return buffer.getvalue()


async def test_an_uploaded_profile_image_is_checked_and_served(client: Client) -> None:
    token = (await login(client, ALICE_42))["token"]
    png = _image("png", "rgb24")
    jpeg = _image("mjpeg", "yuvj420p")

    async def put(body: bytes, content_type: str) -> Any:
        return await client.put("/api/me/profile-image", data=body,
                                headers={**bearer(token), "Content-Type": content_type})

    response = await put(png, "image/png")
    assert response.status == 200, await response.text()
    url = (await response.json())["profile_image_url"]
    assert url.startswith(f"{client.make_url('')}".rstrip("/") + f"/api/users/{ALICE_42}/")
    served = await client.get(f"/api/users/{ALICE_42}/profile-image")
    assert (served.status, await served.read()) == (200, png)
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    again = await client.get(f"/api/users/{ALICE_42}/profile-image",
                             headers={"If-None-Match": served.headers["ETag"]})
    assert again.status == 304

    for body, content_type, status, code in [
            (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "image/png", 400, "not_an_image"),
            (b"<html><script>alert(1)</script></html>", "image/png", 400, "not_an_image"),
            (jpeg, "image/png", 400, "not_an_image"),  # a JPEG called a PNG
            (png[: len(png) // 2], "image/png", 400, "not_an_image"),
            (b"<html></html>", "text/html", 415, "unsupported_media_type"),
            (b"\xff" * (512 * 1024 + 1), "image/jpeg", 413, "payload_too_large")]:
        assert await error_of(await put(body, content_type), status) == code, (content_type,
                                                                                code)
    response = await put(jpeg, "image/jpeg")
    assert response.status == 200
    assert (await (await client.get(f"/api/users/{ALICE_42}/profile-image")).read()) == jpeg
    assert (await response.json())["profile_image_url"] != url  # a new version, a new URL

    response = await client.delete("/api/me/profile-image", headers=bearer(token))
    assert (await response.json())["profile_image_url"] is None
    gone = await client.get(f"/api/users/{ALICE_42}/profile-image")
    assert await error_of(gone, 404) == "no_profile_image"


async def test_a_video_has_several_categories_set_by_its_creator(client: Client,
                                                                 db: asyncpg.Connection) -> None:
    music = await db.fetchval("INSERT INTO categories (name) VALUES ('Music') RETURNING id::text")
    await db.execute("INSERT INTO categories (name) VALUES ('Art'), ('Gaming')")
    alice = await login(client, ALICE_42)
    bob = (await login(client, BOB_42))["token"]
    video = await ready_video(db, alice["user_id"])
    path = f"/api/videos/{video}/categories"
    response = await client.put(path, json={"categories": ["art", music, "Music"]},
                                headers=bearer(alice["token"]))
    assert response.status == 200, await response.text()
    assert [c["name"] for c in (await response.json())["categories"]] == ["Art", "Music"]
    assert await db.fetchval("SELECT count(*) FROM video_categories") == 2
    response = await client.put(path, json={"categories": ["Gaming"]},
                                headers=bearer(alice["token"]))
    assert [c["name"] for c in (await response.json())["categories"]] == ["Gaming"]
    assert await db.fetchval("SELECT count(*) FROM video_categories") == 1
    response = await client.put(path, json={"categories": ["Gaming"]}, headers=bearer(bob))
    assert await error_of(response, 403) == "forbidden"
    response = await client.put(path, json={"categories": ["Nope"]},
                                headers=bearer(alice["token"]))
    assert await error_of(response, 400) == "unknown_category"
    assert await db.fetchval("SELECT count(*) FROM video_categories") == 1  # rolled back
    response = await client.put(path, json={"categories": "Gaming"},
                                headers=bearer(alice["token"]))
    assert await error_of(response, 400) == "invalid_categories"


ODD_VALUES: list[Any] = [None, 0, -1, 1.5, True, [], ["x"], {}, {"a": 1}, "", " ", "\x00",
                         "x" * 70, "00000000-0000-0000-0000-000000000000", "<script>"]


async def test_odd_input_is_a_4xx_never_a_500(client: Client, db: asyncpg.Connection) -> None:
    alice = await login(client, ALICE_42)
    token = (await moderator(client, db, BOB_42))
    stream = await create_stream(client, alice["token"])
    video = await ready_video(db, alice["user_id"])
    report = await (await client.post("/api/reports", json={
        "target_type": "video", "target_id": video, "reason": "spam"},
        headers=bearer(token))).json()
    routes = [
        ("PATCH", "/api/me", ["username", "bio", "profile_image_url", "email"]),
        ("POST", f"/api/streams/{stream['id']}/comments", ["content", "parent_id"]),
        ("POST", f"/api/videos/{video}/comments", ["content", "parent_id"]),
        ("POST", "/api/reports", ["target_type", "target_id", "reason", "description"]),
        ("POST", f"/api/moderation/reports/{report['id']}", ["action"]),
        ("POST", "/api/categories", ["name", "description"]),
        ("PUT", f"/api/videos/{video}/categories", ["categories"]),
        ("POST", "/api/streams", ["category"]),
    ]
    for method, path, fields in routes:
        for name in fields:
            for value in ODD_VALUES:
                body = {"title": "t", "content": "ok", "target_type": "video",
                        "target_id": video, "reason": "spam", "name": "n", name: value}
                response = await client.request(method, path, json=body, headers=bearer(token))
                assert response.status < 500, (method, path, name, value,
                                               await response.text())
    for path in ("/api/users/%00/follow", "/api/comments/x/like", "/api/videos/x/like",
                 f"/api/streams/{stream['id']}/comments?limit=0",
                 f"/api/streams/{stream['id']}/comments?before=nope",
                 f"/api/videos/{video}/comments?parent_id=nope",
                 "/api/moderation/reports?limit=-1", "/api/me/dashboard?hours=x"):
        for method in ("GET", "POST", "DELETE"):
            response = await client.request(method, path, headers=bearer(token))
            assert response.status < 500, (method, path, await response.text())
