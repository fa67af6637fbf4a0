"""The wallet page on a real chain: log in with a wallet extension, deposit
to the escrow from the page (the extension signs a Balances.transfer_keep_alive
that the bundled @polkadot/api builds and submits to chopsticks), see the
deposit credited and the balance change. The extension is the named stand-in
of tests/wallet_stand_in.py."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Page
from substrateinterface import Keypair, SubstrateInterface

from billing.chain import AsyncChain, ChainClient
from billing.deposits import DepositWatcher
from tests import wallet_stand_in
from tests.api_client import serve
from tests.test_pages import chromium, ready, watch_for_errors
from tests.test_settlement import ESCROW, free_of
from tests.web_checks import assert_accessible, serve_axe
from vilokanam.config import Settings
from vilokanam.services.chain import ChainNode

pytestmark = [pytest.mark.chain, pytest.mark.browser,
              pytest.mark.usefixtures("pristine_chain_afterwards")]

DAVE = Keypair.create_from_uri("//Dave", ss58_format=42)

async def credited(watcher: DepositWatcher, page: Page) -> None:
    """Run the chain watcher (the billing role's job) until the page says the
    deposit is credited."""
    async with asyncio.timeout(60):
        while "Deposited" not in await page.inner_text("#deposit-status"):
            await watcher.catch_up()
            await asyncio.sleep(0.2)


async def test_log_in_with_a_wallet_and_deposit_from_the_page(
        db: asyncpg.Connection, redis: aioredis.Redis, pool: asyncpg.Pool, chain: ChainNode,
        api: SubstrateInterface, settings: Settings) -> None:
    settings = dataclasses.replace(settings, dev_mode=False, token_secret="w" * 40,
                                   escrow_account=ESCROW.ss58_address,
                                   chain_public_url=chain.url,
                                   substrate_url=chain.url)
    watcher = DepositWatcher(pool, redis, AsyncChain(ChainClient(chain.url, ESCROW)),
                             ss58_prefix=42, decimals=12)
    await watcher.catch_up()  # its first round starts at the current head
    escrow_before = free_of(api, ESCROW.ss58_address)
    async with serve(settings) as _client, chromium() as browser:
        context = await browser.new_context()
        await wallet_stand_in.install(
            context, [{"address": DAVE.ss58_address, "name": "Dave", "type": "sr25519"}], [DAVE])
        page = await context.new_page()
        errors: list[str] = []
        watch_for_errors(page, errors)
        await serve_axe(page)
        await ready(page, f"http://127.0.0.1:{settings.http_port}/wallet")

        await page.click("#sign-in-open")
        await page.click("#wallet-sign-in")
        await page.wait_for_function(
            "(a) => document.querySelector('#account').textContent === a", arg=DAVE.ss58_address)
        await page.wait_for_selector("#wallet:not([hidden])")
        await page.wait_for_function(
            "() => document.querySelector('#balance').textContent === '0 ROC'")

        # A bad amount is refused next to the field, before the wallet is asked.
        await page.fill("#deposit-amount", "1.0000000000001")
        await page.click("#deposit")
        await page.wait_for_selector("#deposit-amount-error:not(:empty)")
        assert "at most 12 decimals" in await page.inner_text("#deposit-amount-error")

        await page.fill("#deposit-amount", "1.5")
        await page.click("#deposit")
        await page.wait_for_function("""() => document.querySelector('#deposit-status')
            .textContent.includes('In block') || document.querySelector('#deposit-form')
            .querySelector('[data-error-for=""]').textContent !== ''""", timeout=60000)
        failed = page.locator("#deposit-form [data-error-for='']")
        assert await failed.inner_text() == "", await failed.get_attribute("data-detail")
        await credited(watcher, page)
        assert "your balance is 1.5 ROC" in await page.inner_text("#deposit-status")
        assert await page.inner_text("#balance") == "1.5 ROC"
        assert free_of(api, ESCROW.ss58_address) == escrow_before + 15 * 10**11
        assert await db.fetchval(
            "SELECT balance FROM viewer_balances vb JOIN users u ON u.id = vb.user_id "
            "WHERE u.account_id = $1", DAVE.ss58_address) == Decimal("1.5")
        await assert_accessible(page, "wallet after a deposit")
        assert errors == []
