"""The local dev chain is a real runtime: funding from the config lands
exactly, a signed transfer is included and moves exactly its amount, and the
node survives kill -9 + start (as a fresh, re-funded genesis: it is in memory)."""

from __future__ import annotations

import pytest
from substrateinterface import Keypair, SubstrateInterface

from tests.conftest import ALICE_FUNDS, ESCROW_FUNDS, ESCROW_URI
from vilokanam.services.chain import (
    CHAIN_SS58_PREFIX,
    TOKEN_DECIMALS,
    TOKEN_SYMBOL,
    ChainNode,
    dev_accounts,
)

pytestmark = pytest.mark.chain

ESCROW = Keypair.create_from_uri(ESCROW_URI, ss58_format=CHAIN_SS58_PREFIX)


def _client(node: ChainNode) -> SubstrateInterface:
    return SubstrateInterface(url=node.url, ss58_format=CHAIN_SS58_PREFIX)


def _free(api: SubstrateInterface, address: str) -> int:
    return int(api.query("System", "Account", [address]).value["data"]["free"])


def _transfer(api: SubstrateInterface, sender: Keypair, dest: str, amount: int) -> None:
    call = api.compose_call("Balances", "transfer_keep_alive", {"dest": dest, "value": amount})
    extrinsic = api.create_signed_extrinsic(call=call, keypair=sender)
    receipt = api.submit_extrinsic(extrinsic, wait_for_inclusion=True)
    assert receipt.is_success, receipt.error_message


def test_chain_identity_matches_the_constants(chain: ChainNode) -> None:
    api = _client(chain)
    assert api.token_symbol == TOKEN_SYMBOL
    assert api.token_decimals == TOKEN_DECIMALS
    assert api.get_constant("System", "SS58Prefix").value == CHAIN_SS58_PREFIX
    assert chain.rpc("system_chain") == "asset-hub-rococo"


def test_dev_accounts_are_the_well_known_keys() -> None:
    accounts = dev_accounts()
    assert list(accounts) == ["alice", "bob", "charlie", "dave", "eve", "ferdie"]
    assert accounts["alice"] == Keypair.create_from_uri(
        "//Alice", ss58_format=CHAIN_SS58_PREFIX).ss58_address


def test_configured_funding_is_exact(chain: ChainNode) -> None:
    api = _client(chain)
    assert _free(api, dev_accounts()["alice"]) == ALICE_FUNDS
    assert _free(api, ESCROW.ss58_address) == ESCROW_FUNDS


def test_transfer_keep_alive_lands_and_moves_exactly_the_amount(chain: ChainNode) -> None:
    api = _client(chain)
    alice = Keypair.create_from_uri("//Alice", ss58_format=CHAIN_SS58_PREFIX)
    bob = dev_accounts()["bob"]
    before = _free(api, bob)
    amount = 7 * 10**TOKEN_DECIMALS + 1
    _transfer(api, alice, bob, amount)
    assert _free(api, bob) == before + amount


def test_kill_9_then_start_serves_a_fresh_funded_genesis(chain: ChainNode) -> None:
    pid = chain.process.pid
    chain.kill()
    assert not chain.process.running and pid is not None
    chain.start()
    api = _client(chain)
    # In memory: the chain restarts at genesis with the configured funding.
    assert _free(api, dev_accounts()["alice"]) == ALICE_FUNDS
    # Bob received a transfer in an earlier test: after the restart it is gone.
    assert _free(api, dev_accounts()["bob"]) == ALICE_FUNDS
    _transfer(api, Keypair.create_from_uri("//Alice", ss58_format=CHAIN_SS58_PREFIX),
              ESCROW.ss58_address, 10**TOKEN_DECIMALS)
    assert _free(api, ESCROW.ss58_address) == ESCROW_FUNDS + 10**TOKEN_DECIMALS
