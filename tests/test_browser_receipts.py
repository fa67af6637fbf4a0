"""Viewer-signed delivery receipts from the real watch page: Chromium watches
a Chromium publisher through a real SFU worker and signaling process; the
page makes an Ed25519 session key (WebCrypto), has the wallet sign the
delegation, signs a cumulative receipt every 10 s and a last one on leave;
the session is billed by the `signed` rule, never past its signed seconds +
the grace.

The wallet is the one stand-in here: a Polkadot extension cannot be installed
in this Chromium, so `window.injectedWeb3` is a test wallet with the
extension's interface (`enable`, `accounts.get`, `signer.signRaw`) that signs
in Python with //Bob's real sr25519 key, wrapping the data in <Bytes>…</Bytes>
exactly as polkadot{.js} does. The server checks that signature for real."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, BrowserContext
from substrateinterface import Keypair

from billing.flush import Flusher
from tests.conftest import Stores
from tests.flushing import drain
from tests.processes import Platform
from tests.test_e2e_browser import (
    ALICE,
    BOB,
    open_page,
    start_publishing,
    start_watching,
    wait_text,
)
from vilokanam.balances import credit
from vilokanam.delivery import GRACE_SECONDS

pytestmark = pytest.mark.browser

BOB_KEY = Keypair.create_from_uri("//Bob", ss58_format=42)
TEST_WALLET = """(() => {
  const account = { address: "BOB_ADDRESS", name: "Bob (test wallet)", type: "sr25519" };
  window.injectedWeb3 = { "test-wallet": { version: "0", enable: async () => ({
    accounts: { get: async () => [account] },
    signer: { signRaw: async ({ address, data }) =>
      ({ id: 1, signature: await window.vkTestWalletSign(address, data) }) },
  }) } };
})();""".replace("BOB_ADDRESS", BOB)


def wallet_sign(address: str, data: str) -> str:
    assert address == BOB
    message = b"<Bytes>" + bytes.fromhex(data.removeprefix("0x")) + b"</Bytes>"
    return "0x" + BOB_KEY.sign(message).hex()


async def with_test_wallet(context: BrowserContext) -> None:
    """The test wallet in every page of the context."""
    await context.add_init_script(TEST_WALLET)
    await context.expose_function("vkTestWalletSign", wallet_sign)


async def test_a_chromium_viewer_is_billed_by_its_signed_receipts(
        platform: Platform, browser: Browser, db: asyncpg.Connection,
        redis: aioredis.Redis, stores: Stores) -> None:
    token = platform.post("/api/dev/token", {"account": ALICE})["token"]
    stream = platform.post("/api/streams", {"title": "signed", "require_signed_receipts": True},
                           token)
    bob = platform.post("/api/dev/token", {"account": BOB})["user_id"]
    await credit(db, redis, bob, Decimal(100), "adjustment", "funds", 12)

    publisher = await open_page(browser, stream["publish_url"])
    await start_publishing(publisher, stream["stream_key"])
    await wait_text(publisher, "#state", "live")
    viewer = await open_page(browser, stream["watch_url"], prepare=with_test_wallet)
    await start_watching(viewer)
    await wait_text(viewer, "#state", "watching")

    # The first receipt comes after 10 s; the page shows what was accepted.
    await viewer.wait_for_selector("#signed-seconds[data-vk-billing='signed']", timeout=20000)
    await viewer.wait_for_function(
        "() => parseInt(document.querySelector('#signed-seconds').textContent) >= 5",
        timeout=25000)
    session = await db.fetchrow("SELECT * FROM stream_viewers WHERE viewer_id = $1::uuid", bob)
    assert session["billing_rule"] == "signed"
    delegation = await db.fetchrow("SELECT * FROM viewer_delegations")
    assert delegation["message"].startswith(f"vilokanam:delegation:v1:{BOB}:{stream['id']}:")
    await viewer.click("#leave")  # a last receipt, then leave
    await wait_text(viewer, "#state", "left")

    pool = await asyncpg.create_pool(stores.database_url, min_size=1, max_size=2)
    try:
        flusher = Flusher(pool, redis, Decimal("0.1"))
        deadline = asyncio.get_running_loop().time() + 15
        while True:  # the worker's last ticks reach Redis within a second or two
            await drain(flusher)
            row = await db.fetchrow(
                "SELECT total_ticks, paid_amount, signed_seconds, is_active FROM stream_viewers "
                "WHERE id = $1", session["id"])
            if not row["is_active"] and not await redis.zcard("vk:ticks:pending"):
                break
            assert asyncio.get_running_loop().time() < deadline, dict(row)
            await asyncio.sleep(0.2)
    finally:
        await pool.close()
    receipts = await db.fetch("SELECT seconds, amount FROM delivery_receipts "
                              "WHERE stream_viewer_id = $1 ORDER BY seconds", session["id"])
    assert len(receipts) >= 2  # every 10 s, and one on leave
    last = receipts[-1]
    assert row["signed_seconds"] == last["seconds"]
    assert last["amount"] == last["seconds"] * Decimal("0.001")  # exact, signed by the page
    # Billed by the signed rule: never past the signed seconds + grace, and
    # the page counted the same media seconds the worker metered.
    assert row["total_ticks"] <= last["seconds"] + GRACE_SECONDS
    assert abs(row["total_ticks"] - last["seconds"]) <= 2, (dict(row), last["seconds"])
    assert row["paid_amount"] == row["total_ticks"] * Decimal("0.001")
    for page in (publisher, viewer):
        assert page.errors == []  # type: ignore[attr-defined]
