"""Wallet login against real Postgres and Redis: real sr25519 and ed25519
signatures (raw and <Bytes>-wrapped), one user per key whatever the prefix,
every refusal with its code, single use, expiry, the rate limit, and the pages
logging in through a stand-in polkadot{.js} extension."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Page
from prometheus_client import REGISTRY
from scalecodec.utils.ss58 import ss58_encode
from substrateinterface import Keypair, KeypairType

from signaling import auth
from tests import wallet_stand_in
from tests.api_client import (
    ALICE_2,
    ALICE_42,
    BOB_42,
    Client,
    bearer,
    dev_settings,
    error_of,
    serve,
)
from tests.test_pages import chromium, new_stream, watch_for_errors
from vilokanam.config import Settings

ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")
# substrate-interface 1.8 derives no ed25519 keys from //Bob URIs: a fixed seed instead.
CAROL_ED = Keypair.create_from_seed("0x" + "42" * 32, crypto_type=KeypairType.ED25519)
CAROL_ED_42 = str(ss58_encode(CAROL_ED.public_key, ss58_format=42))
CAROL_ED_2 = str(ss58_encode(CAROL_ED.public_key, ss58_format=2))


@pytest.fixture
async def client(db: asyncpg.Connection, redis: aioredis.Redis,
                 settings: Settings) -> AsyncIterator[Client]:
    # Not dev mode: wallet login is the production way in.
    async with serve(dev_settings(settings, dev_mode=False)) as client:
        yield client


async def get_challenge(client: Client, account: str) -> str:
    response = await client.post("/api/auth/challenge", json={"account": account})
    assert response.status == 200, await response.text()
    return str((await response.json())["challenge"])


def sign(keypair: Keypair, challenge: str, wrap: bool = False) -> str:
    message = challenge.encode()
    if wrap:  # what the polkadot{.js} extension signs
        message = b"<Bytes>" + message + b"</Bytes>"
    return "0x" + bytes(keypair.sign(message)).hex()


async def verify(client: Client, account: str, signature: Any) -> Any:
    return await client.post("/api/auth/verify", json={"account": account,
                                                      "signature": signature})


async def wallet_login(client: Client, keypair: Keypair, account: str,
                       wrap: bool = False) -> dict[str, str]:
    challenge = await get_challenge(client, account)
    response = await verify(client, account, sign(keypair, challenge, wrap))
    assert response.status == 200, await response.text()
    return dict(await response.json())


def wallet_failures() -> float:
    return REGISTRY.get_sample_value("vilokanam_auth_failures_total", {"kind": "wallet"}) or 0.0


async def refused(client: Client, account: str, signature: Any, status: int = 401) -> str:
    return await error_of(await verify(client, account, signature), status)


# -- challenges ----------------------------------------------------------------------

async def test_challenge_names_site_account_and_expiry(client: Client, settings: Settings,
                                                       redis: aioredis.Redis) -> None:
    response = await client.post("/api/auth/challenge", json={"account": ALICE_2})
    body = await response.json()
    assert set(body) == {"challenge", "expires_at"}
    lines = body["challenge"].split("\n")
    assert lines[0] == "Vilokanam-view login"
    assert lines[1] == f"site: {settings.base_url}"
    assert lines[2] == f"account: {ALICE_42}"  # canonical, whatever prefix was asked in
    assert re.fullmatch(r"nonce: [0-9a-f]{32}", lines[3])  # 128 bits
    assert lines[4] == f"expires: {body['expires_at']}"
    assert body["expires_at"].endswith("Z")
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert 298 <= expires - time.time() <= 300
    assert await redis.ttl(f"vk:auth:challenges:{ALICE_42}") in (299, 300)


async def test_challenges_coexist_and_each_is_single_use(client: Client) -> None:
    first, second = await get_challenge(client, ALICE_42), await get_challenge(client, ALICE_42)
    assert first != second
    assert (await verify(client, ALICE_42, sign(ALICE, second))).status == 200
    assert (await verify(client, ALICE_42, sign(ALICE, first))).status == 200
    assert await refused(client, ALICE_42, sign(ALICE, first)) == "challenge_invalid"


async def test_only_the_newest_challenges_are_kept(client: Client) -> None:
    challenges = [await get_challenge(client, ALICE_42) for _ in range(auth.CHALLENGES_KEPT + 1)]
    assert await refused(client, ALICE_42, sign(ALICE, challenges[0])) == "bad_signature"
    assert (await verify(client, ALICE_42, sign(ALICE, challenges[-1]))).status == 200


# -- logging in ---------------------------------------------------------------------

async def test_sr25519_login_gives_a_token_for_the_api(client: Client,
                                                       db: asyncpg.Connection) -> None:
    body = await wallet_login(client, ALICE, ALICE_42)
    assert set(body) == {"token", "user_id", "account"} and body["account"] == ALICE_42
    assert tuple(await db.fetchrow("SELECT id::text, account_id, is_creator FROM users")) == (
        body["user_id"], ALICE_42, False)
    me = await client.get("/api/me", headers=bearer(body["token"]))
    assert me.status == 200
    assert (await me.json())["account"] == ALICE_42
    # Creating a stream makes the wallet user a creator.
    created = await client.post("/api/streams", json={"title": "Mine"},
                                headers=bearer(body["token"]))
    assert created.status == 201
    assert (await (await client.get("/api/me", headers=bearer(body["token"]))).json())[
        "is_creator"] is True


async def test_extension_wrapped_signature_logs_in(client: Client) -> None:
    assert (await wallet_login(client, ALICE, ALICE_42, wrap=True))["account"] == ALICE_42


@pytest.mark.parametrize("wrap", [False, True])
async def test_ed25519_login(client: Client, wrap: bool) -> None:
    assert (await wallet_login(client, CAROL_ED, CAROL_ED_42, wrap))["account"] == CAROL_ED_42


async def test_one_key_in_two_prefixes_is_one_user(client: Client,
                                                   db: asyncpg.Connection) -> None:
    chain = await wallet_login(client, ALICE, ALICE_2)
    generic = await wallet_login(client, ALICE, ALICE_42)
    assert chain["user_id"] == generic["user_id"]
    assert chain["account"] == generic["account"] == ALICE_42
    # A challenge asked for in one prefix is verified in the other: same account.
    challenge = await get_challenge(client, CAROL_ED_2)
    assert (await verify(client, CAROL_ED_42, sign(CAROL_ED, challenge))).status == 200
    assert await db.fetchval("SELECT count(*) FROM users") == 2


# -- refusals -------------------------------------------------------------------------

async def test_wrong_signature_is_refused_and_leaves_the_challenge(client: Client) -> None:
    challenge = await get_challenge(client, ALICE_42)
    before = wallet_failures()
    assert await refused(client, ALICE_42, sign(ALICE, challenge + "!")) == "bad_signature"
    assert await refused(client, ALICE_42, "0x" + "00" * 64) == "bad_signature"
    assert await refused(client, ALICE_42, "0x" + "ff" * 64) == "bad_signature"
    assert wallet_failures() == before + 3
    # Guesses cannot use up the owner's challenge.
    assert (await verify(client, ALICE_42, sign(ALICE, challenge))).status == 200


async def test_another_accounts_signature_is_refused(client: Client,
                                                     db: asyncpg.Connection) -> None:
    challenge = await get_challenge(client, ALICE_42)
    assert await refused(client, ALICE_42, sign(BOB, challenge)) == "bad_signature"
    bobs = await get_challenge(client, BOB_42)  # Bob's own challenge, claimed as Alice
    assert await refused(client, ALICE_42, sign(BOB, bobs)) == "bad_signature"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_replayed_challenge_is_refused(client: Client) -> None:
    challenge = await get_challenge(client, ALICE_42)
    signature = sign(ALICE, challenge)
    assert (await verify(client, ALICE_42, signature)).status == 200
    assert await refused(client, ALICE_42, signature) == "challenge_invalid"
    # Still refused while the account has another live challenge.
    await get_challenge(client, ALICE_42)
    assert await refused(client, ALICE_42, signature) == "challenge_invalid"


async def test_concurrent_replays_one_wins(client: Client) -> None:
    signature = sign(ALICE, await get_challenge(client, ALICE_42))
    responses = await asyncio.gather(*(verify(client, ALICE_42, signature) for _ in range(5)))
    assert sorted(r.status for r in responses) == [200, 401, 401, 401, 401]


async def test_no_challenge_is_refused(client: Client) -> None:
    assert await refused(client, ALICE_42, sign(ALICE, "anything")) == "challenge_invalid"


async def test_expired_challenge_is_refused(client: Client,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "CHALLENGE_TTL_S", 0.3)
    alone = await get_challenge(client, ALICE_42)
    await asyncio.sleep(0.5)  # time passing IS the test: the 0.3 s TTL runs out
    assert await refused(client, ALICE_42, sign(ALICE, alone)) == "challenge_invalid"

    expired = await get_challenge(client, ALICE_42)
    monkeypatch.setattr(auth, "CHALLENGE_TTL_S", 300.0)
    live = await get_challenge(client, ALICE_42)  # keeps the account's set in Redis
    await asyncio.sleep(0.5)  # time passing IS the test: `expired`'s 0.3 s TTL runs out
    assert await refused(client, ALICE_42, sign(ALICE, expired)) == "challenge_invalid"
    assert (await verify(client, ALICE_42, sign(ALICE, live))).status == 200


SHORT_INDEX = str(ss58_encode("0x01", ss58_format=42))  # an account index, not a key


@pytest.mark.parametrize("account", ["nope", "", 42, None, ALICE_42[:-1] + "Z", [ALICE_42],
                                     SHORT_INDEX])
async def test_malformed_account_is_400(client: Client, account: Any) -> None:
    response = await client.post("/api/auth/challenge", json={"account": account})
    assert await error_of(response, 400) == "invalid_account"
    assert await refused(client, account, sign(ALICE, "x"), 400) == "invalid_account"


@pytest.mark.parametrize("signature", [
    None, 42, "", "0x", "00" * 64, "0x" + "00" * 63, "0x" + "00" * 65, "0x" + "zz" * 64,
    "0x" + "00" * 63 + "0", " 0x" + "00" * 64, ["0x" + "00" * 64]])
async def test_malformed_signature_is_400(client: Client, signature: Any) -> None:
    await get_challenge(client, ALICE_42)
    before = wallet_failures()
    assert await refused(client, ALICE_42, signature, 400) == "invalid_signature"
    assert wallet_failures() == before  # a malformed request guesses nothing


async def test_missing_fields_and_bad_json(client: Client) -> None:
    for path in ("/api/auth/challenge", "/api/auth/verify"):
        assert await error_of(await client.post(path, json={}), 400) == "invalid_account"
        response = await client.post(path, data=b"{", headers={"Content-Type": "application/json"})
        assert await error_of(response, 400) == "bad_json"
        assert await error_of(await client.get(path), 405) == "method_not_allowed"
    response = await client.post("/api/auth/verify", json={"account": ALICE_42})
    assert await error_of(response, 400) == "invalid_signature"


async def test_failures_are_rate_limited_per_address(client: Client,
                                                     redis: aioredis.Redis) -> None:
    challenge = await get_challenge(client, ALICE_42)
    for _ in range(auth.WALLET_LIMIT.max_failures):
        assert await refused(client, ALICE_42, sign(BOB, challenge)) == "bad_signature"
    # Limited: even the right signature is refused, and the challenge stays unused.
    response = await verify(client, ALICE_42, sign(ALICE, challenge))
    assert await error_of(response, 429) == "rate_limited"
    assert response.headers["Retry-After"] == str(auth.WALLET_LIMIT.window_s)
    await redis.delete("vk:ratelimit:wallet:127.0.0.1")  # the window ends
    assert (await verify(client, ALICE_42, sign(ALICE, challenge))).status == 200


async def test_without_a_token_secret_no_login(db: asyncpg.Connection, redis: aioredis.Redis,
                                               settings: Settings) -> None:
    async with serve(dev_settings(settings, token_secret=None)) as client:
        challenge = await get_challenge(client, ALICE_42)
        response = await verify(client, ALICE_42, sign(ALICE, challenge))
        assert await error_of(response, 503) == "tokens_unavailable"


def test_find_signed_tries_both_curves_and_wrappings() -> None:
    challenges = ["a", "b"]
    for keypair, wrap in ((ALICE, False), (ALICE, True), (CAROL_ED, False), (CAROL_ED, True)):
        signature = bytes.fromhex(sign(keypair, "b", wrap)[2:])
        assert auth.find_signed(keypair.public_key, 42, signature, challenges) == "b"
    signature = bytes.fromhex(sign(BOB, "b")[2:])
    assert auth.find_signed(ALICE.public_key, 42, signature, challenges) is None


# -- the pages -------------------------------------------------------------------------

WALLET_KEYS = [ALICE, BOB]


async def open_with_wallet(page: Page, url: str, accounts: list[dict[str, str]]) -> None:
    """The page with the stand-in extension (tests/wallet_stand_in.py), its
    sign-in dialog open."""
    await wallet_stand_in.install(page, accounts, WALLET_KEYS)
    await page.goto(url)
    await page.wait_for_selector("body[data-ready='true']")
    await page.click("#sign-in-open")


async def signed_in_account(page: Page) -> str:
    await page.wait_for_function("() => document.querySelector('#account').textContent "
                                 "!== 'nobody yet' || "
                                 "document.querySelector('#sign-in-error').textContent")
    return await page.inner_text("#account")


async def test_pages_log_in_with_the_extension(db: asyncpg.Connection, redis: aioredis.Redis,
                                               settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client, chromium() as browser:
        stream_id = await new_stream(client)
        base = f"http://127.0.0.1:{settings.http_port}"
        errors: list[str] = []
        for page_name in ("watch", "publish"):
            page = await browser.new_page()
            watch_for_errors(page, errors)
            await open_with_wallet(page, f"{base}/{page_name}/{stream_id}",
                                   [{"address": ALICE_2, "name": "Alice", "type": "sr25519"}])
            assert await page.is_hidden("#wallet-account")
            await page.click("#wallet-sign-in")
            account = await signed_in_account(page)
            assert account == ALICE_42, await page.inner_text("#sign-in-error")
            calls = await page.evaluate("window.walletCalls")
            assert calls[0] == {"enable": "Vilokanam-view"}
            payload = calls[1]["signRaw"]
            assert (payload["address"], payload["type"]) == (ALICE_2, "bytes")
            assert bytes.fromhex(payload["data"][2:]).decode().startswith("Vilokanam-view login")
            assert await page.is_hidden("#wallet-form")
            stored = json.loads(await page.evaluate("sessionStorage.getItem('vilokanam.viewer')"))
            me = await client.get("/api/me", headers=bearer(stored["token"]))
            assert (await me.json())["account"] == ALICE_42
        assert errors == []


async def test_with_several_accounts_the_person_picks_one(db: asyncpg.Connection,
                                                         redis: aioredis.Redis,
                                                         settings: Settings) -> None:
    async with serve(dev_settings(settings)) as client, chromium() as browser:
        stream_id = await new_stream(client)
        page = await browser.new_page()
        await open_with_wallet(page, f"http://127.0.0.1:{settings.http_port}/publish/{stream_id}", [
            {"address": ALICE_2, "name": "Alice", "type": "sr25519"},
            {"address": "0x" + "11" * 20, "name": "Eth", "type": "ethereum"},  # cannot log in
            {"address": BOB_42, "name": "Bob", "type": "sr25519"}])
        await page.click("#wallet-sign-in")
        await page.wait_for_selector("#wallet-account", state="visible")
        options = await page.eval_on_selector_all("#wallet-account option",
                                                  "options => options.map(o => o.value)")
        assert options == [ALICE_2, BOB_42]
        assert await page.evaluate("window.walletCalls.length") == 1  # nothing signed yet
        await page.select_option("#wallet-account", BOB_42)
        await page.click("#wallet-sign-in")
        assert await signed_in_account(page) == BOB_42, await page.inner_text("#sign-in-error")


async def test_pages_without_an_extension_say_so(db: asyncpg.Connection, redis: aioredis.Redis,
                                                 settings: Settings) -> None:
    async with serve(dev_settings(settings, dev_mode=False)) as client, chromium() as browser:
        stream_id = await new_stream_as_wallet_user(client)
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{settings.http_port}/watch/{stream_id}")
        await page.wait_for_selector("body[data-ready='true']")
        await page.click("#sign-in-open")
        assert await page.locator("#dev-token-form").count() == 0  # not dev mode
        await page.click("#wallet-sign-in")
        await page.wait_for_selector("#sign-in-error[data-code='no_wallet']")
        assert "polkadot{.js}" in await page.inner_text("#sign-in-error")
        assert await page.inner_text("#account") == "nobody yet"


async def new_stream_as_wallet_user(client: Client) -> str:
    token = (await wallet_login(client, ALICE, ALICE_42))["token"]
    response = await client.post("/api/streams", json={"title": "t"}, headers=bearer(token))
    return str((await response.json())["id"])

