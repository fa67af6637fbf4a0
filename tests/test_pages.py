"""The publish and watch pages: served with their configuration (ICE servers
from settings, never a public default), 404 for unknown streams, and loading in
Chromium without a script error or a CSP violation."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from playwright.async_api import Browser, ConsoleMessage, Page, WebSocketRoute, async_playwright

from tests.conftest import CHROMIUM_ARGS, chromium_path, require
from tests.test_api import ALICE_42, Client, create_stream, dev_settings, login, serve
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


async def test_pages_carry_script_and_configuration(db: asyncpg.Connection,
                                                    settings: Settings) -> None:
    async with serve(dev_settings(settings, ice_servers=ICE)) as client:
        stream_id = await new_stream(client)
        for page in ("publish", "watch"):
            response = await client.get(f"/{page}/{stream_id}")
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            html = await response.text()
            assert '<script src="/static/vilokanam.js" defer></script>' in html
            assert f'<body data-page="{page}">' in html
            assert "Evening &lt;b&gt;show&lt;/b&gt; &amp; more" in html  # escaped, not markup
            assert "</script><b>" not in html  # a credential cannot end the JSON element
            config = page_config(html)
            assert config["iceServers"] == ICE and config["streamId"] == stream_id
            assert config["protocolVersion"] == 1


async def test_no_ice_servers_means_none(db: asyncpg.Connection, settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        html = await (await client.get(f"/watch/{await new_stream(client)}")).text()
        assert page_config(html)["iceServers"] == []
        assert "stun:" not in html


async def test_watch_page_offers_dev_accounts_only_in_dev_mode(db: asyncpg.Connection,
                                                               settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        config = page_config(await (await client.get(f"/watch/{await new_stream(client)}")).text())
        assert config["devMode"] is True
        assert [a["name"] for a in config["devAccounts"]][:2] == ["Alice", "Bob"]
        assert config["devAccounts"][0]["account"] == ALICE_42  # the stored prefix
    async with serve(dev_settings(settings, dev_mode=False)) as client:
        stream_id = str(uuid.uuid4())
        await db.execute("INSERT INTO users (id, account_id) VALUES ($1::uuid, 'a')", stream_id)
        await db.execute("INSERT INTO streams (id, creator_id, title, stream_key_hash) "
                         "VALUES ($1::uuid, $1::uuid, 't', sha256('k'))", stream_id)
        config = page_config(await (await client.get(f"/watch/{stream_id}")).text())
        assert (config["devMode"], config["devAccounts"]) == (False, [])


async def test_unknown_or_malformed_stream_is_a_404_page(db: asyncpg.Connection,
                                                         settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        for path in ("/watch/nope", "/publish/123", f"/watch/{uuid.uuid4()}",
                     f"/publish/{uuid.uuid4()}"):
            response = await client.get(path)
            assert response.status == 404 and response.content_type == "text/html"
            assert "Not found" in await response.text()


async def test_script_is_served(db: asyncpg.Connection, settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client:
        response = await client.get("/static/vilokanam.js")
        assert response.status == 200
        assert response.content_type in ("application/javascript", "text/javascript")
        assert "window.vilokanam" in await response.text()
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


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    path = chromium_path()
    require(path is not None, "Debian's chromium")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_pages_run_in_chromium_without_errors(db: asyncpg.Connection,
                                                    settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client, chromium() as browser:
        stream_id = await new_stream(client)
        base = f"http://127.0.0.1:{settings.http_port}"
        errors: list[str] = []
        page = await browser.new_page()
        watch_for_errors(page, errors)

        await page.goto(f"{base}/watch/{stream_id}")
        assert await page.evaluate("window.vilokanam.state.phase") == "idle"
        assert await page.evaluate("window.vilokanam.pc") is None
        await page.click("#dev-sign-in")  # the first dev account: Alice
        await page.wait_for_function(
            "(account) => document.querySelector('#account').textContent === account",
            arg=ALICE_42)
        stored = await page.evaluate("sessionStorage.getItem('vilokanam.viewer')")
        assert json.loads(stored)["account"] == ALICE_42
        await page.click("#watch")
        await settled_phase(page)
        await page.click("#mute")
        assert await page.evaluate("document.querySelector('#video').muted") is False

        await page.goto(f"{base}/publish/{stream_id}")
        await page.fill("#stream-key", "sk_not-the-key")
        await page.click("#start")
        await settled_phase(page)
        assert "sk_" not in page.url  # the key never goes into a URL
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
        await page.goto(f"{base}/publish/{stream_id}")
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
        await page.goto(f"{base}/watch/{stream_id}")
        await page.click("#dev-sign-in")
        await page.wait_for_function("() => !document.querySelector('#watch').disabled")
        await page.click("#watch")
        assert await phase_and_error(page) == ("ended", None, "The stream has ended.")
        token = json.loads(await page.evaluate("sessionStorage.getItem('vilokanam.viewer')"))
        assert (sent[0]["stream_id"], sent[0]["token"]) == (stream_id, token["token"])
        assert sent[0]["sdp"].count("a=recvonly") == 2
        assert await page.inner_text("#viewer-count") == "7"

        page = await browser.new_page()
        watch_for_errors(page, errors)
        sent = await scripted_ws(page, {}, version=2)
        await page.goto(f"{base}/publish/{stream_id}")
        await page.fill("#stream-key", "sk_typed")
        await page.click("#start")
        assert (await phase_and_error(page))[:2] == ("error", "protocol_mismatch")
        assert sent == []
        assert errors == []
