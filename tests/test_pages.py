"""The publish and watch pages: served with their configuration (ICE servers
from settings, never a public default), 404 for unknown streams, and loading in
Chromium without a script error or a CSP violation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import uuid
from typing import Any

import asyncpg
from playwright.async_api import ConsoleMessage, Page, WebSocketRoute

from tests.api_client import ALICE_42, Client, create_stream, dev_settings, login, serve
from tests.conftest import chromium
from tests.web_checks import assert_accessible, serve_axe
from vilokanam.config import Settings

ICE = [{"urls": "stun:127.0.0.1:3478"},
       {"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "</script><b>"}]


def page_config(html: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="vk-config">(.*?)</script>', html,
                      re.S)
    assert match, "the page carries its configuration"
    return dict(json.loads(match.group(1)))


async def new_stream(client: Client, title: str = "Evening <b>show</b> & more") -> str:
    token = (await login(client))["token"]
    return str((await create_stream(client, token, title=title))["id"])


PAGES = ("/", "/studio", "/wallet")


async def test_pages_carry_script_and_configuration(db: asyncpg.Connection,
                                                    settings: Settings) -> None:
    async with serve(dev_settings(settings, ice_servers=ICE)) as client:
        stream_id = await new_stream(client)
        for page, path in [("publish", f"/publish/{stream_id}"), ("watch", f"/watch/{stream_id}"),
                           ("home", "/"), ("studio", "/studio"), ("wallet", "/wallet")]:
            response = await client.get(path)
            assert response.status == 200
            assert response.content_type == "text/html"
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self';" in csp and "style-src 'self';" in csp
            assert "unsafe" not in csp and "form-action 'none'" in csp
            html = await response.text()
            assert '<script type="module" src="/static/js/main.js"></script>' in html
            assert '<link rel="stylesheet" href="/static/css/app.css">' in html
            assert f'<body data-page="{page}">' in html
            assert "<style" not in html and " style=" not in html  # no inline style for CSP
            assert "</script><b>" not in html  # a credential cannot end the JSON element
            config = page_config(html)
            assert config["iceServers"] == ICE and config["protocolVersion"] == 1
            if page in ("publish", "watch"):
                assert config["streamId"] == stream_id
                assert "Evening &lt;b&gt;show&lt;/b&gt; &amp; more" in html  # escaped, not markup
                assert "<b>show</b>" not in html


async def test_home_lists_live_streams_by_viewers_and_searches(db: asyncpg.Connection,
                                                               settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        ids = {}
        for title, viewers in [("quiet <i>jazz</i>", 1), ("busy chess", 40), ("pending one", 0)]:
            ids[title] = await new_stream(client, title)
            if viewers:
                await db.execute("UPDATE streams SET status = 'live', viewer_count = $2 "
                                 "WHERE id = $1::uuid", ids[title], viewers)
        html = await (await client.get("/")).text()
        assert html.index(ids["busy chess"]) < html.index(ids["quiet <i>jazz</i>"])
        assert ids["pending one"] not in html  # live streams only
        assert "quiet &lt;i&gt;jazz&lt;/i&gt;" in html and "<i>jazz</i>" not in html
        found = await (await client.get("/?q=JAZZ")).text()
        assert ids["quiet <i>jazz</i>"] in found and ids["busy chess"] not in found
        assert page_config(found)["query"] == "JAZZ"
        nothing = await (await client.get("/?q=%3Cscript%3E")).text()
        assert "No live stream matches “&lt;script&gt;”" in nothing
        assert "<script>" not in nothing.replace('<script type="application/json"', "")


async def test_home_shows_categories_and_recent_videos_and_filters_by_one(
        db: asyncpg.Connection, settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        music, art = [await db.fetchval(
            "INSERT INTO categories (name, description) VALUES ($1, $2) RETURNING id::text",
            name, f"all <b>{name}</b>") for name in ("Music", "Art")]
        alice = await login(client)
        token = alice["token"]
        live = {}
        for title, category in [("Live jazz", "Music"), ("Live painting", "Art")]:
            live[title] = (await create_stream(client, token, title=title,
                                               category=category))["id"]
        await db.execute("UPDATE streams SET status = 'live'")
        videos = {}
        for title, status, category, age in [("Old <b>tune</b>", "ready", music, 2),
                                             ("New sketch", "ready", art, 1),
                                             ("Still processing", "processing", music, 0)]:
            videos[title] = await db.fetchval(
                "INSERT INTO videos (creator_id, title, status, published_at, view_count) "
                "VALUES ($1::uuid, $2, $3, now() - make_interval(hours => $4), 5) "
                "RETURNING id::text", alice["user_id"], title, status, age)
            await db.execute("INSERT INTO video_categories (video_id, category_id) "
                             "VALUES ($1::uuid, $2::uuid)", videos[title], category)

        html = await (await client.get("/")).text()
        assert f'href="/?category={music}"' in html and f'href="/?category={art}"' in html
        assert html.index(">Art</a>") < html.index(">Music</a>")  # by name
        assert "all &lt;b&gt;Music&lt;/b&gt;" in html and "<b>Music</b>" not in html
        assert html.index(f"/video/{videos['New sketch']}") < html.index(
            f"/video/{videos['Old <b>tune</b>']}")  # newest first
        assert "Old &lt;b&gt;tune&lt;/b&gt;" in html and videos["Still processing"] not in html
        assert live["Live jazz"] in html and live["Live painting"] in html
        # One card (parts/cards.html) on the home and category pages: the keyframe on both.
        jazz_thumb = f"/api/streams/{live['Live jazz']}/thumbnail.jpg?v=7"
        await db.execute("UPDATE streams SET thumbnail_url = $2 WHERE id = $1::uuid",
                         live["Live jazz"], jazz_thumb)
        for path in ("/", f"/category/{music}"):
            card = await (await client.get(path)).text()
            assert f'<img class="live-thumb" src="{jazz_thumb}"' in card

        narrowed = await (await client.get(f"/?category={music}")).text()
        assert live["Live jazz"] in narrowed and live["Live painting"] not in narrowed
        assert videos["Old <b>tune</b>"] in narrowed and videos["New sketch"] not in narrowed
        assert f'href="/?category={music}" aria-current="page"' in narrowed
        assert page_config(narrowed)["category"] == music
        for bad in ("nope", str(uuid.uuid4())):
            missing = await client.get(f"/?category={bad}")
            assert missing.status == 404
            assert "There is no category at this address." in await missing.text()
        await db.execute("DELETE FROM video_categories")
        await db.execute("DELETE FROM videos")
        empty = await (await client.get("/")).text()
        assert 'id="no-videos"' in empty


async def test_csp_lets_the_wallet_reach_only_the_chain_rpc(db: asyncpg.Connection,
                                                            settings: Settings) -> None:
    chain = dataclasses.replace(dev_settings(settings), chain_public_url="ws://127.0.0.1:9944/x")
    async with serve(chain) as client:
        csp = (await client.get("/wallet")).headers["Content-Security-Policy"]
        assert "connect-src 'self' ws://127.0.0.1:9944;" in csp
    none = dataclasses.replace(dev_settings(settings), chain_public_url=None, substrate_url=None)
    async with serve(none) as client:
        csp = (await client.get("/wallet")).headers["Content-Security-Policy"]
        assert "connect-src 'self';" in csp


async def test_no_ice_servers_means_none(db: asyncpg.Connection, settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        html = await (await client.get(f"/watch/{await new_stream(client)}")).text()
        assert page_config(html)["iceServers"] == []
        assert "stun:" not in html


async def test_dev_accounts_only_in_dev_mode(db: asyncpg.Connection,
                                             settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        html = await (await client.get(f"/watch/{await new_stream(client)}")).text()
        config = page_config(html)
        assert config["devMode"] is True
        assert [a["name"] for a in config["devAccounts"]][:2] == ["Alice", "Bob"]
        assert config["devAccounts"][0]["account"] == ALICE_42  # the stored prefix
        assert 'id="dev-token-form"' in html and 'id="token-form"' not in html
    async with serve(dev_settings(settings, dev_mode=False)) as client:
        stream_id = str(uuid.uuid4())
        await db.execute("INSERT INTO users (id, account_id) VALUES ($1::uuid, 'a')", stream_id)
        await db.execute("INSERT INTO streams (id, creator_id, title, stream_key_hash) "
                         "VALUES ($1::uuid, $1::uuid, 't', sha256('k'))", stream_id)
        for path in (f"/watch/{stream_id}", "/studio"):
            html = await (await client.get(path)).text()
            config = page_config(html)
            assert (config["devMode"], config["devAccounts"]) == (False, [])
            assert 'id="dev-token-form"' not in html and 'id="token-form"' in html


async def test_unknown_or_malformed_stream_is_a_404_page(db: asyncpg.Connection,
                                                         settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        for path in ("/watch/nope", "/publish/123", f"/watch/{uuid.uuid4()}",
                     f"/publish/{uuid.uuid4()}"):
            response = await client.get(path)
            assert response.status == 404 and response.content_type == "text/html"
            assert "Not found" in await response.text()
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]


async def test_the_video_page_is_rendered_with_the_layout(db: asyncpg.Connection,
                                                          settings: Settings) -> None:
    """A ready video's page: the shared layout, its title as text, the price,
    hls.js and the modules from this server; a video not ready is a 404 page."""
    async with serve(dev_settings(settings)) as client:
        alice = await login(client)
        video_id = await db.fetchval(
            "INSERT INTO videos (creator_id, title, status, price_per_second, view_count) "
            "VALUES ($1::uuid, 'Replay <b>one</b>', 'ready', 0.002, 7) RETURNING id::text",
            alice["user_id"])
        response = await client.get(f"/video/{video_id}")
        assert response.status == 200 and response.content_type == "text/html"
        assert "form-action 'none'" in response.headers["Content-Security-Policy"]
        html = await response.text()
        assert '<body data-page="video">' in html and 'id="sign-in-dialog"' in html
        assert '<script src="/static/hls.light.min.js" defer></script>' in html
        assert html.index("/static/hls.light.min.js") < html.index("/static/js/main.js")
        assert "Replay &lt;b&gt;one&lt;/b&gt;" in html and "<b>one</b>" not in html
        assert alice["account"] in html and ">7</span> views" in html
        assert "0.002 " + settings.token_symbol + "/s" in html
        assert page_config(html)["videoId"] == video_id
        await db.execute("UPDATE videos SET status = 'processing' WHERE id = $1::uuid", video_id)
        for path in (f"/video/{video_id}", "/video/nope", f"/video/{uuid.uuid4()}"):
            missing = await client.get(path)
            assert missing.status == 404 and missing.content_type == "text/html"
            text = await missing.text()
            assert "There is no video at this address." in text
            assert '<body data-page="not-found">' in text


async def test_scripts_and_styles_are_served(db: asyncpg.Connection, settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        for path, needle in [("/static/js/main.js", "setUpSignIn"),
                             ("/static/js/core.js", "window.vilokanam"),
                             ("/static/css/app.css", "prefers-color-scheme: dark"),
                             ("/static/js/pages/video.js", "videoPage"),
                             ("/static/js/receipts.js", "DeliveryReceipts"),
                             ("/static/hls.light.min.js", "Hls"),
                             ("/static/vendor/polkadot-api.js", "@polkadot/api")]:
            response = await client.get(path)
            assert response.status == 200, path
            assert needle in await response.text()
        assert (await client.get("/static/js/main.js")).content_type in (
            "application/javascript", "text/javascript")
        missing = await client.get("/static/nope.js")
        assert missing.status == 404


def watch_for_errors(page: Page, errors: list[str]) -> None:
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            errors.append(f"csp: {message.text}")

    page.on("console", on_console)


async def settled_phase(page: Page) -> str:
    """Wait until a session has got past its first steps (however far /ws goes)."""
    await page.wait_for_function(
        "() => !['idle', 'connecting'].includes(window.vilokanam.state.phase)", timeout=15000)
    return str(await page.evaluate("window.vilokanam.state.phase"))


async def ready(page: Page, url: str) -> None:
    """Open `url` and wait until its modules have wired the page up."""
    await page.goto(url)
    await page.wait_for_selector("body[data-ready='true']")


async def sign_in_dev(page: Page, index: int = 0) -> str:
    """Sign in as a dev account from the header's dialog, as a person does."""
    await page.click("#sign-in-open")
    await page.select_option("#dev-account", index=index)
    account = await page.eval_on_selector("#dev-account", "s => s.value")
    await page.click("#dev-sign-in")
    await page.wait_for_function(
        "(account) => document.querySelector('#account').textContent === account", arg=account)
    return str(account)


async def test_pages_run_in_chromium_without_errors(db: asyncpg.Connection,
                                                    settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client, chromium() as browser:
        stream_id = await new_stream(client)
        base = f"http://127.0.0.1:{settings.http_port}"
        errors: list[str] = []
        page = await browser.new_page()
        watch_for_errors(page, errors)

        for path in PAGES:  # signed out: each page asks to sign in, nothing breaks
            await ready(page, f"{base}{path}")
            assert await page.is_visible("#sign-in-open")
        video_id = await db.fetchval(
            "INSERT INTO videos (creator_id, title, status) SELECT creator_id, 'Replay', 'ready' "
            "FROM streams WHERE id = $1::uuid RETURNING id::text", stream_id)
        await ready(page, f"{base}/video/{video_id}")
        assert await page.is_visible("#sign-in-needed") and await page.is_disabled("#play")
        await ready(page, f"{base}/watch/{stream_id}")
        assert await page.evaluate("window.vilokanam.state.phase") == "idle"
        assert await page.evaluate("window.vilokanam.pc") is None
        assert await page.is_visible("#sign-in-needed") and await page.is_disabled("#watch")
        assert await sign_in_dev(page) == ALICE_42  # the first dev account: Alice
        assert not await page.is_visible("#sign-in-needed")
        await page.wait_for_selector("#header-balance-box:not([hidden])")
        assert await page.inner_text("#header-balance") == "0 ROC"
        stored = await page.evaluate("sessionStorage.getItem('vilokanam.viewer')")
        assert json.loads(stored)["account"] == ALICE_42
        await page.click("#watch")
        await settled_phase(page)
        await page.click("#mute")
        assert await page.evaluate("document.querySelector('#video').muted") is False

        await ready(page, f"{base}/publish/{stream_id}")
        await page.fill("#stream-key", "sk_not-the-key")
        await page.click("#start")
        await settled_phase(page)
        assert "sk_" not in page.url  # the key never goes into a URL
        for path in PAGES:  # signed in (the tab keeps it): each page loads its data
            await ready(page, f"{base}{path}")
            assert await page.is_hidden("#sign-in-open")
        await ready(page, f"{base}/video/{video_id}")
        assert await page.is_hidden("#sign-in-needed") and await page.is_enabled("#play")
        assert errors == []


Replies = dict[str, list[dict[str, Any]]]


async def scripted_ws(page: Page, replies: Replies, version: int = 1) -> list[dict[str, Any]]:
    """Stand in for the server's /ws: say hello, answer each client message
    with `replies[its type]`; returns the list of messages the page sent."""
    received: list[dict[str, Any]] = []

    def connected(ws: WebSocketRoute) -> None:
        def on_message(text: str | bytes) -> None:
            message = json.loads(text)
            received.append(message)
            for reply in replies.get(message["type"], []):
                ws.send(json.dumps(reply))

        ws.on_message(on_message)
        ws.send(json.dumps({"type": "hello", "version": version}))

    await page.route_web_socket(re.compile(r"/ws$"), connected)
    return received


async def phase_and_error(page: Page) -> tuple[str, str | None, str]:
    await settled_phase(page)
    return (await page.evaluate("window.vilokanam.state.phase"),
            await page.get_attribute("#error", "data-code"), await page.inner_text("#error"))


async def test_pages_speak_the_websocket_protocol(db: asyncpg.Connection,
                                                  settings: Settings) -> None:
    """The pages against a scripted /ws: the join messages they send, and what
    they make of viewer counts, stream_ended, errors and a version mismatch."""
    async with serve(dev_settings(settings)) as client, chromium() as browser:
        stream_id = await new_stream(client)
        base = f"http://127.0.0.1:{settings.http_port}"
        errors: list[str] = []

        page = await browser.new_page()
        watch_for_errors(page, errors)
        sent = await scripted_ws(page, {"publish": [
            {"type": "viewer_count", "count": 3},
            {"type": "error", "code": "unauthorized", "message": "bad key"}]})
        await ready(page, f"{base}/publish/{stream_id}")
        await page.fill("#stream-key", "sk_typed")
        await page.click("#start")
        assert await phase_and_error(page) == ("error", "unauthorized",
                                               "That stream key was refused.")
        publish = sent[0]  # and nothing else: candidates wait for the answer
        assert [m["type"] for m in sent] == ["publish"]
        assert (publish["stream_id"], publish["stream_key"]) == (stream_id, "sk_typed")
        assert publish["sdp"].count("a=sendonly") == 2
        assert "m=audio" in publish["sdp"] and "m=video" in publish["sdp"]
        assert await page.inner_text("#viewer-count") == "3"
        assert await page.is_enabled("#start")  # ready to try again
        assert await page.evaluate("document.querySelector('#preview').srcObject") is None

        page = await browser.new_page()
        watch_for_errors(page, errors)
        sent = await scripted_ws(page, {"watch": [{"type": "viewer_count", "count": 7},
                                                  {"type": "stream_ended"}]})
        await ready(page, f"{base}/watch/{stream_id}")
        await sign_in_dev(page)
        await page.wait_for_function("() => !document.querySelector('#watch').disabled")
        await page.click("#watch")
        assert await phase_and_error(page) == ("ended", None, "The stream has ended.")
        await page.wait_for_selector("#reconnect-box:not([hidden])")  # offered to try again
        assert await page.inner_text("#reconnect") == "Watch again"
        token = json.loads(await page.evaluate("sessionStorage.getItem('vilokanam.viewer')"))
        # The chat panel's own socket says auth / chat_join on the same route.
        assert {m["type"] for m in sent} <= {"watch", "auth", "chat_join"}
        watch = next(m for m in sent if m["type"] == "watch")
        assert (watch["stream_id"], watch["token"]) == (stream_id, token["token"])
        assert watch["sdp"].count("a=recvonly") == 2
        assert await page.inner_text("#viewer-count") == "7"

        page = await browser.new_page()  # the server goes away mid-session
        watch_for_errors(page, errors)

        def drops_on_watch(ws: WebSocketRoute) -> None:
            ws.on_message(lambda _text: ws.close())
            ws.send(json.dumps({"type": "hello", "version": 1}))

        await page.route_web_socket(re.compile(r"/ws$"), drops_on_watch)
        await ready(page, f"{base}/watch/{stream_id}")
        await sign_in_dev(page)
        await page.click("#watch")
        assert await phase_and_error(page) == (
            "error", "connection_lost", "The connection to the server was lost.")
        await page.wait_for_selector("#reconnect-box:not([hidden])")
        assert await page.inner_text("#reconnect") == "Reconnect"
        assert await page.is_enabled("#watch")

        page = await browser.new_page()
        watch_for_errors(page, errors)
        sent = await scripted_ws(page, {}, version=2)
        await ready(page, f"{base}/publish/{stream_id}")
        await page.fill("#stream-key", "sk_typed")
        await page.click("#start")
        assert (await phase_and_error(page))[:2] == ("error", "protocol_mismatch")
        assert sent == []
        assert errors == []


async def test_the_studio_manages_a_stream_as_its_creator_does(db: asyncpg.Connection,
                                                               settings: Settings) -> None:
    """Create, the key once, rotate, edit (errors next to the field), payouts
    with their extrinsic hash, end; another user sees none of the controls."""
    async with serve(dev_settings(settings)), chromium() as browser:
        base = f"http://127.0.0.1:{settings.http_port}"
        errors: list[str] = []
        page = await browser.new_page()
        watch_for_errors(page, errors)
        await ready(page, f"{base}/studio")
        assert await page.is_visible("#sign-in-needed")
        await sign_in_dev(page)
        await page.fill("#create-title-input", "Chess openings")
        await page.click("#create-stream")
        await page.wait_for_url("**/publish/*")
        stream_id = page.url.rsplit("/", 1)[1]
        await page.wait_for_selector("#key-box:not([hidden])")
        key = await page.input_value("#revealed-key")
        digest = await db.fetchval("SELECT stream_key_hash FROM streams WHERE id = $1::uuid",
                                   stream_id)
        assert bytes(digest) == hashlib.sha256(key.encode()).digest()

        await ready(page, page.url)  # shown once: not after a reload
        await page.wait_for_selector("#manage:not([hidden])")
        assert await page.is_hidden("#key-box") and await page.input_value("#stream-key") == ""
        await page.click("#rotate-key")
        await page.wait_for_selector("#key-box:not([hidden])")
        rotated = await page.input_value("#revealed-key")
        assert rotated.startswith("sk_") and rotated != key
        digest = await db.fetchval("SELECT stream_key_hash FROM streams WHERE id = $1::uuid",
                                   stream_id)
        assert bytes(digest) == hashlib.sha256(rotated.encode()).digest()

        await page.fill("#edit-title", "")
        await page.click("#edit-form button[type=submit]")
        await page.wait_for_selector("#edit-title-error:not(:empty)")
        assert await page.inner_text("#edit-title-error") == "title must be 1 to 255 characters"
        assert await page.get_attribute("#edit-title", "aria-invalid") == "true"
        await page.fill("#edit-title", "Chess <openings> & endgames")
        await page.fill("#edit-price", "-1")
        await page.click("#edit-form button[type=submit]")
        await page.wait_for_selector("#edit-price-error:not(:empty)")
        assert "price_per_second must be" in await page.inner_text("#edit-price-error")
        assert await page.inner_text("#edit-title-error") == ""
        await page.fill("#edit-price", "0.005")
        await page.click("#edit-form button[type=submit]")
        await page.wait_for_selector("#edit-saved:has-text('Saved.')")
        assert await page.inner_text("#stream-title") == "Chess <openings> & endgames"
        assert await page.inner_text("#stat-price") == "0.005 ROC/s"
        assert await db.fetchval("SELECT title FROM streams WHERE id = $1::uuid",
                                 stream_id) == "Chess <openings> & endgames"
        await page.click("#end-stream")
        await page.wait_for_selector("#stat-status:has-text('ended')")
        assert await page.is_disabled("#end-stream")

        alice = await db.fetchval("SELECT id FROM users WHERE account_id = $1", ALICE_42)
        settlement = await db.fetchval(
            """INSERT INTO settlements (status, signer, nonce, extrinsic_hash, extrinsic,
                   genesis_hash, signed_at, signed_at_hash, era_death, digest, remark,
                   total_planck, block_number, finalized_at)
               VALUES ('completed', '0x01', 0, '0xfeedbeef', '0x', '0x', 1, '0x', 65, 'd',
                       'r', 7000000000000, 42, now()) RETURNING id""")
        await db.execute("INSERT INTO settlement_payouts VALUES ($1, $2, '0x02', "
                         "7000000000000, 7)", settlement, alice)
        await ready(page, f"{base}/studio")
        await page.wait_for_selector("#payouts:not([hidden])")
        row = await page.inner_text("#payouts tbody tr")
        assert "7 ROC" in row and "completed" in row and "0xfeedbeef" in row and "42" in row
        streams = await page.inner_text("#my-streams tbody")
        assert "Chess <openings> & endgames" in streams and "ended" in streams

        other = await browser.new_page()
        watch_for_errors(other, errors)
        await ready(other, f"{base}/publish/{stream_id}")
        await sign_in_dev(other, index=1)  # Bob
        assert await other.is_hidden("#manage")
        assert errors == []


async def test_every_page_is_accessible_light_dark_and_narrow(db: asyncpg.Connection,
                                                              settings: Settings) -> None:
    """axe-core finds no serious or critical violation on any page, signed in
    or out, in light and dark colours, at 360 px and on a desktop; the
    sign-in dialog works from the keyboard alone."""
    async with serve(dev_settings(settings)) as client, chromium() as browser:
        stream_id = await new_stream(client, "A live <b>one</b>")
        await db.execute("UPDATE streams SET status = 'live', viewer_count = 3")
        base = f"http://127.0.0.1:{settings.http_port}"
        category = await db.fetchval(
            "INSERT INTO categories (name) VALUES ('Music') RETURNING id::text")
        video_id = await db.fetchval(
            "INSERT INTO videos (creator_id, title, status) SELECT creator_id, 'A <i>replay</i>', "
            "'ready' FROM streams WHERE id = $1::uuid RETURNING id::text", stream_id)
        paths = ["/", "/?q=nothing-matches", f"/?category={category}", "/studio", "/wallet",
                 f"/watch/{stream_id}", f"/publish/{stream_id}", "/watch/nope",
                 f"/video/{video_id}", "/video/nope"]
        errors: list[str] = []
        for scheme, width in (("light", 1280), ("dark", 360)):
            context = await browser.new_context(color_scheme=scheme,
                                                viewport={"width": width, "height": 800})
            page = await context.new_page()
            watch_for_errors(page, errors)
            await serve_axe(page)
            for signed_in in (False, True):
                for path in paths:
                    await ready(page, f"{base}{path}")
                    await assert_accessible(page, f"{path} {scheme} {width}px "
                                                  f"{'signed in' if signed_in else 'signed out'}")
                    # Nothing wider than the screen: no sideways scrolling at 360 px.
                    assert await page.evaluate(
                        "document.documentElement.scrollWidth <= window.innerWidth"), path
                if not signed_in:
                    # Keyboard only: Tab to "Sign in", Enter, pick, submit.
                    await ready(page, f"{base}/studio")
                    for _ in range(10):
                        await page.keyboard.press("Tab")
                        if await page.evaluate("document.activeElement.id") == "sign-in-open":
                            break
                    await page.keyboard.press("Enter")
                    await page.wait_for_selector("#sign-in-dialog[open]")
                    await assert_accessible(page, f"sign-in dialog {scheme}")
                    await page.focus("#dev-account")
                    await page.keyboard.press("Tab")
                    assert await page.evaluate("document.activeElement.id") == "dev-sign-in"
                    await page.keyboard.press("Enter")
                    await page.wait_for_selector("#studio:not([hidden])")
                    assert await page.inner_text("#account") == ALICE_42
            await context.close()
        assert errors == []
