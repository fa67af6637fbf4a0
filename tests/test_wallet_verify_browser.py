"""The wallet page verifies a receipt in Chromium against the chain
(chopsticks): a real settlement batch is made by the real Settler; the page
fetches the viewer's receipt, recomputes the line's Merkle path with WebCrypto
(signaling/static/js/receipt_verify.js), reads the batch's remark from the
chain with the bundled @polkadot/api and says "verified on chain". A receipt
tampered on its way to the page (playwright changes the API's answer) says
why not: root mismatch, remark not found; a chain that does not answer says
so; an old digest-style settlement verifies too."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import BrowserContext, Page, Route

from billing.settlement import Settler
from tests.api_client import SECRET, serve
from tests.conftest import ESCROW_URI
from tests.test_pages import chromium, ready, watch_for_errors
from tests.test_receipts import digest_settler, settled_show
from tests.test_settlement import Show
from tests.web_checks import assert_accessible, screenshot, serve_axe
from vilokanam.accounts import address_of, canonical_account
from vilokanam.config import Settings
from vilokanam.services.chain import ChainNode
from vilokanam.services.net import free_port

pytestmark = [pytest.mark.chain, pytest.mark.browser,
              pytest.mark.usefixtures("pristine_chain_afterwards")]

TITLE = "Night sky over the hills"


async def signed_in(context: BrowserContext, show: Show, index: int) -> None:
    """The viewer's session, as the header's sign-in leaves it (sessionStorage)."""
    from signaling.tokens import issue_token

    _, user, key = show.viewers[index]
    account = canonical_account(key.ss58_address, 42)
    token = issue_token(SECRET, user, account)
    stored = json.dumps(json.dumps({"token": token, "account": account}))
    await context.add_init_script(f"sessionStorage.setItem('vilokanam.viewer', {stored});")


async def verdict_of(page: Page) -> tuple[str, str, list[str]]:
    """Press Verify on the one session row and wait for the page's verdict
    (the press itself sets it to "checking")."""
    await page.click(f"button[aria-label='Verify the receipt for {TITLE} on chain']")
    await page.wait_for_function(
        "() => ['verified', 'not-verified', 'unreachable'].includes("
        "document.querySelector('#receipt-verdict').dataset.verdict)", timeout=90000)
    verdict = await page.get_attribute("#receipt-verdict", "data-verdict")
    assert verdict is not None
    return (verdict, await page.inner_text("#receipt-verdict"),
            await page.locator("#receipt-problems li").all_inner_texts())


def answer_with(change: Any) -> Any:
    """A route handler: the real API's answer, changed by `change(json)`."""
    async def handle(route: Route) -> None:
        response = await route.fetch()
        body = await response.json()
        change(body)
        await route.fulfill(response=response, body=json.dumps(body))
    return handle


def wallet_settings(settings: Settings, chain: ChainNode) -> Settings:
    return dataclasses.replace(settings, dev_mode=False, token_secret=SECRET,
                               escrow_account=address_of(ESCROW_URI),
                               substrate_url=chain.url, chain_public_url=chain.url)


@dataclass
class Wallet:
    """One viewer's wallet page on a settled show, its sessions listed."""
    show: Show
    viewer: int  # which of the show's viewers is signed in
    settings: Settings  # what the serving signaling app runs with
    page: Page
    errors: list[str]  # the page's script errors and CSP refusals

    @property
    def session(self) -> str:
        """The signed-in viewer's session (its receipt's id)."""
        return str(self.show.viewers[self.viewer][0])


@asynccontextmanager
async def wallet_of_a_settled_viewer(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        settings: Settings, *, viewers: int, viewer: int,
        settler: Settler | None = None) -> AsyncIterator[Wallet]:
    """Settle a show of `viewers` on the chain (by `settler`, the current
    Settler unless given) and open the wallet page of its `viewer`-th viewer,
    signed in, in Chromium (axe served, for an accessibility check)."""
    show = await settled_show(db, redis, pool, chain, viewers=viewers, settler=settler)
    await db.execute("UPDATE streams SET title = $1 WHERE id = $2", TITLE, show.stream_id)
    settings = wallet_settings(settings, chain)
    async with serve(settings), chromium() as browser:
        context = await browser.new_context()
        await signed_in(context, show, viewer)
        page = await context.new_page()
        errors: list[str] = []
        watch_for_errors(page, errors)
        await serve_axe(page)
        await ready(page, f"http://127.0.0.1:{settings.http_port}/wallet")
        await page.wait_for_selector("#sessions:not([hidden])")
        yield Wallet(show, viewer, settings, page, errors)


async def test_a_receipt_is_verified_on_chain_in_the_browser_and_a_tampered_one_is_not(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, settings: Settings) -> None:
    async with wallet_of_a_settled_viewer(db, redis, pool, chain, settings,
                                          viewers=3, viewer=1) as wallet:
        show, session, settings, page = wallet.show, wallet.session, wallet.settings, wallet.page
        verdict, text, problems = await verdict_of(page)
        assert (verdict, problems) == ("verified", []), text
        assert "Verified on chain" in text
        # Only the viewer's own line and its path reached the page.
        shown = await page.inner_text("#receipt")
        assert f"{session}:" in shown and "path to the root" in shown
        assert all(other not in shown for other, _, _ in (show.viewers[0], show.viewers[2]))
        await assert_accessible(page, "wallet with a verified receipt")
        await page.set_viewport_size({"width": 360, "height": 800})
        await screenshot(page, "wallet-receipt-verified-360")
        await page.set_viewport_size({"width": 1280, "height": 800})

        # A larger amount: its line no longer leads to the root the remark carries.
        def larger(receipt: dict[str, Any]) -> None:
            for where in (receipt, *receipt["settlements"]):
                where.update(line=f"{session}:9", amount="9")
            receipt.update(charge="9", settled="9")

        receipt_url = f"**/api/receipts/{session}"
        await page.route(receipt_url, answer_with(larger))
        verdict, text, problems = await verdict_of(page)
        assert verdict == "not-verified", text
        assert any("root mismatch" in p for p in problems), problems

        # Another extrinsic of the block (the timestamp inherent): no such remark.
        def elsewhere(receipt: dict[str, Any]) -> None:
            for where in (receipt, *receipt["settlements"]):
                where.update(extrinsic_index=0)

        await page.unroute(receipt_url)
        await page.route(receipt_url, answer_with(elsewhere))
        verdict, text, problems = await verdict_of(page)
        assert verdict == "not-verified", text
        assert any("remark not found" in p for p in problems), problems
        await page.unroute(receipt_url)

        # And the true receipt still verifies afterwards.
        verdict, text, _ = await verdict_of(page)
        assert verdict == "verified", text

        # A server whose chain node does not answer (nothing listens there; the
        # page's CSP allows it, as it allows the configured node): said so in
        # good time, no hang.
        dead = dataclasses.replace(settings, http_port=free_port(),
                                   chain_public_url=f"ws://127.0.0.1:{free_port()}")
        async with serve(dead):
            await ready(page, f"http://127.0.0.1:{dead.http_port}/wallet")
            await page.wait_for_selector("#sessions:not([hidden])")
            verdict, text, problems = await verdict_of(page)
            assert verdict == "unreachable" and "does not answer" in text, (text, problems)
        assert wallet.errors == []


async def test_an_old_digest_settlement_is_verified_in_the_browser(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool,
        chain: ChainNode, settings: Settings) -> None:
    async with wallet_of_a_settled_viewer(db, redis, pool, chain, settings, viewers=2, viewer=0,
                                          settler=digest_settler(pool, chain)) as wallet:
        page = wallet.page
        verdict, text, _ = await verdict_of(page)
        assert verdict == "verified", text
        assert "digest-v1" in await page.inner_text("#receipt-fields")

        # One line of the batch changed: the lines no longer hash to the digest.
        def other_lines(receipt: dict[str, Any]) -> None:
            batch = receipt["settlements"][0]
            mine = batch["line"]
            batch["lines"] = [line if line == mine else line + "1" for line in batch["lines"]]

        await page.route(f"**/api/receipts/{wallet.session}", answer_with(other_lines))
        verdict, text, problems = await verdict_of(page)
        assert verdict == "not-verified", text
        assert any("digest mismatch" in p for p in problems), problems
        assert wallet.errors == []
