"""The social web app as people use it, in Chromium against real processes
(signaling, an SFU worker, billing), Postgres and Redis: two viewers chat
beside a live stream (Enter sends, a flood is refused beside the input, a
deleted line disappears, markup stays text), one follows the creator, one
tips and the tip shows in the other's chat; the channel and category pages;
comments and likes on the video page; a moderator removes a reported chat
line from the moderation queue and the viewer's chat shows it gone. Every
page passes axe-core, fits 360 px, and is photographed for docs/."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page

from tests.test_e2e_browser import (
    ALICE,
    BOB,
    Platform,
    open_page,
    sign_in,
    start_publishing,
    wait_text,
)
from tests.web_checks import assert_accessible, screenshot, serve_axe
from vilokanam.balances import credit

pytestmark = pytest.mark.browser

CAROL = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"  # //Charlie
FITS_360 = "() => document.documentElement.scrollWidth <= window.innerWidth"


async def chat_lines(page: Page) -> list[str]:
    texts = await page.locator("#chat-log .chat-line .chat-text").all_inner_texts()
    return [t.strip() for t in texts]


async def wait_chat_line(page: Page, text: str, present: bool = True) -> None:
    await page.wait_for_function(
        """([text, present]) => [...document.querySelectorAll('#chat-log .chat-text')]
             .some((e) => e.textContent === text) === present""",
        arg=[text, present], timeout=20000)


async def say(page: Page, text: str) -> None:
    """Type into the chat and press Enter, as a person does."""
    await page.locator("#chat-input").focus()
    await page.fill("#chat-input", text)
    await page.keyboard.press("Enter")


async def fits_360(page: Page, what: str) -> None:
    await page.set_viewport_size({"width": 360, "height": 740})
    assert await page.evaluate(FITS_360), f"{what} is wider than 360 px"
    await page.set_viewport_size({"width": 1280, "height": 800})


async def go_live(platform: Platform, browser: Browser, title: str) -> tuple[dict, Page]:
    token = platform.post("/api/dev/token", {"account": ALICE})["token"]
    stream = platform.post("/api/streams", {"title": title}, token)
    publisher = await open_page(browser, stream["publish_url"])
    await start_publishing(publisher, stream["stream_key"])
    await wait_text(publisher, "#state", "live")
    return stream, publisher


async def test_two_viewers_chat_follow_and_tip_beside_a_live_stream(
        platform: Platform, browser: Browser, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    stream, publisher = await go_live(platform, browser, "Chat <night>")
    for account in (BOB, CAROL):
        user_id = platform.post("/api/dev/token", {"account": account})["user_id"]
        await credit(db, redis, user_id, Decimal(10), "adjustment", "social funds", 12)

    bob = await open_page(browser, stream["watch_url"])
    carol = await open_page(browser, stream["watch_url"])
    await serve_axe(bob)
    await bob.wait_for_selector("#chat-log[data-joined='true']")
    assert await bob.is_disabled("#chat-input")  # reading needs no sign-in; writing does
    await assert_accessible(bob, "watch with chat, signed out")
    await sign_in(bob, BOB)
    await sign_in(carol, CAROL)
    await carol.wait_for_selector("#chat-log[data-joined='true']")
    await bob.wait_for_selector("#chat-input:not([disabled])")
    await carol.wait_for_selector("#chat-input:not([disabled])")

    # Bob and Carol talk; markup is text.
    await say(bob, "hello <b>carol</b>")
    await wait_chat_line(carol, "hello <b>carol</b>")
    assert await carol.locator("#chat-log b").count() == 0
    assert await bob.input_value("#chat-input") == ""
    await say(carol, "hi bob")
    await wait_chat_line(bob, "hi bob")
    assert await chat_lines(bob) == ["hello <b>carol</b>", "hi bob"]

    # A flood is refused next to the input, in words with the wait.
    for n in range(7):
        await say(bob, f"flood {n}")
    await bob.wait_for_selector("#chat-error[data-code='chat_rate_limited']")
    assert "too fast" in await bob.inner_text("#chat-error")

    # Bob deletes his first line: it disappears from Carol's chat.
    line = bob.locator("#chat-log .chat-line", has_text="hello <b>carol</b>")
    await line.locator(".chat-delete").click()
    await wait_chat_line(carol, "hello <b>carol</b>", present=False)
    await wait_chat_line(bob, "hello <b>carol</b>", present=False)

    # Carol follows Alice with the keyboard: the button and the count change.
    await wait_text(carol, "#follow", "Follow")
    await wait_text(carol, "#follower-count", "0")
    await carol.locator("#follow").focus()
    await carol.keyboard.press("Enter")
    await wait_text(carol, "#follow", "Following")
    await wait_text(carol, "#follower-count", "1")
    assert await carol.get_attribute("#follow", "aria-pressed") == "true"
    assert await db.fetchval(
        "SELECT count(*) FROM follows f JOIN users u ON u.id = f.following_id "
        "WHERE u.account_id = $1", ALICE) == 1
    await carol.reload()
    await wait_text(carol, "#follow", "Following")  # the server's state, not the page's

    # Bob tips: above the balance is refused by the field, then a tip shows in Carol's chat.
    await bob.click("#tip-box summary")
    await bob.fill("#tip-amount", "1000")
    await bob.click("#tip-send")
    await bob.wait_for_selector("#tip-amount-error[data-code='insufficient_funds']")
    assert await bob.get_attribute("#tip-amount", "aria-invalid") == "true"
    await bob.fill("#tip-amount", "1.5")
    await bob.fill("#tip-message", "for the <music>")
    await bob.click("#tip-send")
    await wait_text(bob, "#tip-amount-error", "")
    tip = carol.locator("#chat-log .chat-tip")
    await tip.wait_for(timeout=20000)
    assert "1.5 ROC" in await tip.inner_text()
    assert await tip.locator(".chat-text").inner_text() == "for the <music>"
    await bob.locator("#chat-log .chat-tip").wait_for(timeout=20000)
    paid = await db.fetchval("SELECT amount FROM payments WHERE payment_type = 'tip'")
    assert paid == Decimal("1.5")

    # The viewer count: Bob watches.
    await bob.click("#watch")
    await wait_text(bob, "#state", "watching")
    await wait_text(bob, "#viewer-count", "1")
    await assert_accessible(bob, "watch with chat, signed in and watching")
    await fits_360(bob, "the watch page with chat")
    await screenshot(bob, "watch-chat")
    await bob.click("#leave")
    for page in (publisher, bob, carol):
        assert page.errors == []  # type: ignore[attr-defined]


DAVE = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"  # //Dave


async def test_channel_category_video_comments_and_a_moderator_removing_a_chat_line(
        platform: Platform, browser: Browser, db: asyncpg.Connection) -> None:
    users = {account: platform.post("/api/dev/token", {"account": account})
             for account in (ALICE, BOB, CAROL, DAVE)}
    alice = users[ALICE]
    await db.execute("UPDATE users SET username = 'alice_jazz', bio = $2 WHERE id = $1::uuid",
                     alice["user_id"], "I play <em>jazz</em> nightly")
    await db.execute("UPDATE users SET role = 'moderator' WHERE id = $1::uuid",
                     users[CAROL]["user_id"])
    music = await db.fetchval(
        "INSERT INTO categories (name, description) VALUES ('Music', 'all <b>music</b>') "
        "RETURNING id::text")
    live = platform.post("/api/streams", {"title": "Jazz <live>", "category": "Music"},
                         alice["token"])
    past = platform.post("/api/streams", {"title": "Yesterday's set"}, alice["token"])
    # The pages' subject is what they show: a live row and an ended one (the
    # media path is the other tests').
    await db.execute("UPDATE streams SET status = 'live', start_time = now() WHERE id = $1",
                     live["id"])
    await db.execute("UPDATE streams SET status = 'ended', end_time = now() WHERE id = $1",
                     past["id"])
    video = await db.fetchval(
        "INSERT INTO videos (creator_id, title, status, published_at) "
        "VALUES ($1::uuid, 'Old <b>tune</b>', 'ready', now()) RETURNING id::text",
        alice["user_id"])
    await db.execute("INSERT INTO video_categories (video_id, category_id) "
                     "VALUES ($1::uuid, $2::uuid)", video, music)

    # Bob finds the channel from the home page.
    bob = await open_page(browser, platform.url("/"))
    await serve_axe(bob)
    await bob.locator(f".stream-card[data-stream-id='{live['id']}'] a.creator").click()
    await bob.wait_for_url(f"**/c/{ALICE}")
    assert await bob.inner_text("#channel-title") == "alice_jazz"
    assert await bob.inner_text("#channel-bio") == "I play <em>jazz</em> nightly"
    assert await bob.locator("#channel-bio em").count() == 0
    assert await bob.inner_text("#channel-live-link") == "Jazz <live>"
    assert await bob.locator("#channel-videos .stream-title").all_inner_texts() == [
        "Old <b>tune</b>"]
    assert await bob.locator("#past-streams tbody td").first.inner_text() == "Yesterday's set"
    await sign_in(bob, BOB)
    await wait_text(bob, "#follow", "Follow")
    await bob.click("#follow")
    await wait_text(bob, "#follower-count", "1")
    await wait_text(bob, "#follow", "Following")
    await assert_accessible(bob, "channel")
    await fits_360(bob, "the channel page")
    await screenshot(bob, "channel")

    # The live stream, then its category from the watch page.
    await bob.click("#channel-live-link")
    await bob.wait_for_url(f"**/watch/{live['id']}")
    await wait_text(bob, "#follow", "Following")
    await bob.click("#category-link")
    await bob.wait_for_url(f"**/category/{music}")
    assert await bob.inner_text("#category-title") == "Music"
    assert await bob.inner_text("#category-description") == "all <b>music</b>"
    assert await bob.locator("#live-streams .stream-title").all_inner_texts() == ["Jazz <live>"]
    assert await bob.locator("#category-videos .stream-title").all_inner_texts() == [
        "Old <b>tune</b>"]
    await assert_accessible(bob, "category")
    await fits_360(bob, "the category page")
    await screenshot(bob, "category")

    # The video page: a like, comments, a reply, deleting one's own.
    await bob.click(f"#category-videos [data-video-id='{video}'] a.stream-link")
    await bob.wait_for_url(f"**/video/{video}")
    await wait_text(bob, "#like", "Like")
    await bob.click("#like")
    await wait_text(bob, "#like", "Liked")
    await wait_text(bob, "#like-count", "1")
    await bob.reload()
    await wait_text(bob, "#like", "Liked")  # the server's state after a reload
    await bob.fill("#comment-input", "   ")
    await bob.click("#comment-send")
    await bob.wait_for_selector("#comment-error[data-code='invalid_content']")
    assert await bob.get_attribute("#comment-input", "aria-invalid") == "true"
    await bob.fill("#comment-input", "first <i>comment</i>")
    await bob.click("#comment-send")
    first = bob.locator("#comment-list > li.comment").first
    await first.locator(".comment-text").wait_for()
    assert await first.locator(":scope > .comment-text").inner_text() == "first <i>comment</i>"
    assert await bob.locator("#comment-list i").count() == 0
    await first.locator(".comment-reply").click()
    await bob.keyboard.type("a reply")
    await first.locator("form button[type=submit]").click()
    reply = first.locator(":scope > ol > li.comment")
    await reply.locator(".comment-text").wait_for()
    assert await reply.locator(".comment-text").inner_text() == "a reply"
    await reply.locator(".comment-delete").click()
    await wait_text(bob, "#comment-list > li ol .comment-text", "(deleted)")
    rows = await db.fetch("SELECT content, parent_id IS NOT NULL AS reply, is_deleted "
                          "FROM comments WHERE video_id = $1::uuid ORDER BY created_at", video)
    assert [tuple(r) for r in rows] == [("first <i>comment</i>", False, False),
                                        ("a reply", True, True)]
    # A like on the comment, with the keyboard; its state survives a reload.
    await first.locator(":scope > .comment-actions .comment-like").focus()
    await bob.keyboard.press("Enter")
    liked = first.locator(":scope > .comment-actions .comment-like[aria-pressed='true']")
    await liked.wait_for()
    assert await liked.inner_text() == "Liked"
    await wait_text(bob, "#comment-list > li:first-child > .comment-actions .comment-likes",
                    "1 like")
    assert await db.fetchval("SELECT like_count FROM comments WHERE content = "
                             "'first <i>comment</i>'") == 1
    await bob.reload()
    await liked.wait_for()  # the server's state (GET /api/videos/{id}/comment-likes)
    carol_view = await open_page(browser, platform.url(f"/video/{video}"))
    await carol_view.locator("#comment-list .comment-text").first.wait_for()
    assert await carol_view.locator("#comment-list .comment-text").all_inner_texts() == [
        "first <i>comment</i>", "(deleted)"]
    # Signed out: the count, no button.
    assert await carol_view.locator("#comment-list .comment-likes").first.inner_text() == "1 like"
    assert await carol_view.locator(".comment-like").count() == 0
    await assert_accessible(bob, "video with comments")
    await fits_360(bob, "the video page")
    await screenshot(bob, "video-comments")

    # A chat line reported by Dave, removed by Carol (a moderator) from the queue.
    await bob.goto(live["watch_url"])
    await bob.wait_for_selector("#chat-input:not([disabled])")
    await say(bob, "buy cheap tokens")
    dave = await open_page(browser, live["watch_url"])
    await sign_in(dave, DAVE)
    await wait_chat_line(dave, "buy cheap tokens")
    await dave.locator("#chat-log .chat-line", has_text="buy cheap tokens").locator(
        ".report").click()
    await dave.select_option("#report-reason", "spam")
    await dave.click("#report-send")
    await dave.wait_for_selector("#report-done:not([hidden])")
    await dave.click("#report-close")

    assert (await bob.goto(platform.url("/moderation"))) is not None
    await bob.wait_for_selector("#moderation-error[data-code='not_moderator']")
    assert await bob.is_hidden("#queue")
    assert await bob.is_hidden("#nav-moderation")  # not a moderator: not in the navigation
    # Carol, a moderator, finds the queue in the navigation, with its count,
    # and opens it with the keyboard.
    carol = await open_page(browser, platform.url("/"))
    await serve_axe(carol)
    await sign_in(carol, CAROL)
    await carol.wait_for_selector("#nav-moderation #nav-moderation-count:not([hidden])")
    assert await carol.inner_text("#nav-moderation-open") == "1"
    await carol.focus("#nav-moderation a")
    await carol.keyboard.press("Enter")
    await carol.wait_for_url("**/moderation")
    await carol.wait_for_selector("body[data-ready='true']")
    assert await carol.get_attribute("#nav-moderation a", "aria-current") == "page"
    card = carol.locator("#reports .report-card")
    await card.wait_for()
    assert await card.locator(".report-target").inner_text() == "buy cheap tokens"
    await assert_accessible(carol, "moderation queue")
    await fits_360(carol, "the moderation queue")
    await screenshot(carol, "moderation")
    await card.locator("button[data-action='remove']").click()
    await carol.wait_for_selector("#no-reports:not([hidden])")
    # None open any more: the count leaves the navigation.
    await carol.wait_for_selector("#nav-moderation-count[hidden]", state="attached")
    assert "deleted" in await carol.inner_text("#queue-done")
    await wait_chat_line(dave, "buy cheap tokens", present=False)  # gone from the chat
    row = await db.fetchrow("SELECT status, action FROM reports")
    assert tuple(row) == ("action_taken", "remove")
    assert await db.fetchval("SELECT is_deleted FROM comments WHERE content = "
                             "'buy cheap tokens'") is True
    await carol.select_option("#queue-status", "action_taken")
    await card.wait_for()
    assert "remove" in await card.inner_text()
    for page in (bob, carol, carol_view, dave):
        assert page.errors == []  # type: ignore[attr-defined]


async def test_a_live_channel_plays_its_stream_with_the_watch_pages_player(
        platform: Platform, browser: Browser, db: asyncpg.Connection,
        redis: aioredis.Redis) -> None:
    """The channel page of a live creator embeds the watch page's player: the
    price is shown, opening the page bills nothing, Watch plays the real
    stream (a Chromium publisher through a real SFU worker) and bills it."""
    stream, publisher = await go_live(platform, browser, "Channel <live>")
    bob_id = platform.post("/api/dev/token", {"account": BOB})["user_id"]
    await credit(db, redis, bob_id, Decimal(10), "adjustment", "channel funds", 12)
    bob = await open_page(browser, platform.url(f"/c/{ALICE}"))
    await serve_axe(bob)
    await sign_in(bob, BOB)
    await bob.wait_for_selector("#watch:not([disabled])")
    await bob.wait_for_function(
        "() => document.querySelector('#price').textContent.endsWith('/s')")
    assert await bob.inner_text("#state") == "idle"
    # Open, signed in, the price shown: no viewing session, nothing billed.
    assert await db.fetchval("SELECT count(*) FROM stream_viewers WHERE viewer_id = $1::uuid",
                             bob_id) == 0
    await assert_accessible(bob, "a live channel, before Watch")
    await fits_360(bob, "a live channel")

    await bob.click("#watch")
    await wait_text(bob, "#state", "watching", timeout=60)
    await bob.wait_for_function(
        "() => Number(document.querySelector('#seconds-watched').textContent) >= 2",
        timeout=60000)
    assert await bob.inner_text("#cost") != "0"
    await bob.wait_for_function("() => document.querySelector('#video').videoWidth > 0",
                                timeout=30000)
    assert await db.fetchval("SELECT count(*) FROM stream_viewers WHERE viewer_id = $1::uuid "
                             "AND stream_id = $2::uuid", bob_id, stream["id"]) == 1
    await bob.click("#leave")
    await wait_text(bob, "#state", "left", timeout=30)
    assert bob.errors == []  # type: ignore[attr-defined]
    await publisher.close()
