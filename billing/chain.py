"""The billing worker's view of the Substrate chain.

`ChainClient` is a small SYNCHRONOUS wrapper around substrate-interface (which
is synchronous: a websocket read blocks its thread). Every public method takes
the client's thread lock, so one SubstrateInterface is never used by two
threads at once, and maps failures to two errors: `ChainUnavailable` (the node
does not answer: down, restarting, network; the websocket is dropped and the
next call reconnects) and `ChainRequestError` (the node answered with an error).

`AsyncChain` is the facade the event loop uses: each call runs in a worker
thread (`asyncio.to_thread`), so no chain call ever blocks the loop. It also
remembers when the node last answered (the billing worker's readiness).

Only what production needs is here: finalized heads, block hashes, events,
account nonces and balances, signing and submitting one extrinsic. Nothing
uses chopsticks' test-only `dev_*` RPCs.

The escrow's secret URI is turned into a `Keypair` once (`load_escrow`) and
never stored, logged, or put into an error message."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from scalecodec.utils.ss58 import ss58_decode
from substrateinterface import Keypair, SubstrateInterface
from substrateinterface.exceptions import SubstrateRequestException
from websocket import WebSocketException

WS_TIMEOUT_S = 30.0  # a node that accepts the connection but never answers
ERA_PERIOD = 64  # blocks a settlement extrinsic stays valid (a power of two, >= 4)

# author_submitExtrinsic error codes (sc-rpc-api author errors)
_POOL_INVALID = 1010  # the transaction is invalid (stale nonce, cannot pay fees, bad proof...)
_POOL_ALREADY_IMPORTED = 1013
_POOL_TOO_LOW_PRIORITY = 1014  # another transaction with this nonce is in the pool
_POOL_TEMPORARILY_BANNED = 1012  # seen (and dropped or included) very recently


class ChainUnavailable(ConnectionError):
    """The node does not answer. Safe to retry later."""


class ChainRequestError(RuntimeError):
    """The node answered with an error."""


class EscrowKeyError(ValueError):
    """VILOKANAM_ESCROW_URI is not a usable secret URI (the message never holds it)."""


def load_escrow(secret_uri: str) -> Keypair:
    """The escrow's sr25519 keypair. Errors never repeat the URI."""
    try:
        return Keypair.create_from_uri(secret_uri, ss58_format=42)
    except Exception:  # whatever it is, its message may hold the secret
        raise EscrowKeyError("VILOKANAM_ESCROW_URI is not a valid secret URI") from None


def public_key_hex(address: str) -> str:
    """`0x` + the 32-byte public key of an SS58 address (or of a `0x` key)."""
    if address.startswith("0x"):
        return address.lower()
    return "0x" + str(ss58_decode(address))


@dataclass(frozen=True)
class BlockRef:
    number: int
    hash: str


@dataclass(frozen=True)
class Transfer:
    """A `Balances.Transfer` event: `event_index` is its index in the block's
    `System.Events`, `sender` the payer's public key (0x hex)."""

    event_index: int
    sender: str
    amount: int


@dataclass(frozen=True)
class SignedExtrinsic:
    """A signed extrinsic, ready to submit (and to resubmit byte for byte)."""

    extrinsic_hash: str
    extrinsic: str  # 0x-hex SCALE bytes, as chain_getBlock lists them
    nonce: int
    signed_at: int  # the finalized block the mortal era counts from (its birth)
    signed_at_hash: str
    era_death: int  # first block number in which it can no longer be included
    genesis_hash: str


@dataclass(frozen=True)
class Outcome:
    """What an included extrinsic did: `fee` is what its signer really paid
    (fee withdrawn minus any refund)."""

    success: bool
    error: str | None
    fee: int


class Submitted(enum.Enum):
    ACCEPTED = "accepted"  # in the pool now
    ALREADY_KNOWN = "already_known"  # it (or a rival with the same nonce) is in the pool
    STALE = "stale"  # its nonce is used up: included already, or something else used it
    REJECTED = "rejected"  # invalid: cannot pay fees, bad proof (expired / other chain)...


@dataclass(frozen=True)
class SubmitResult:
    status: Submitted
    reason: str | None = None


PING_LOCK_WAIT_S = 1.0
P = ParamSpec("P")
T = TypeVar("T")


# scalecodec's type registries are not thread-safe: two SubstrateInterface
# objects decoding in two threads at once failed in CI with 'Decoder class for
# "Compact<u32>" not found'. Every call of every client in the process takes
# this one lock; the calls are short (waits for finality are polled).
_SUBSTRATE_LOCK = threading.Lock()


class ChainClient:
    """One websocket to one node; thread-safe (one process-wide lock around
    every substrate-interface call)."""

    def __init__(self, url: str, escrow: Keypair | None = None,
                 ws_timeout: float = WS_TIMEOUT_S) -> None:
        self.url = url
        self._escrow = escrow
        self._ws_timeout = ws_timeout
        self._api: SubstrateInterface | None = None
        self._lock = _SUBSTRATE_LOCK

    def __repr__(self) -> str:  # never the keypair
        return f"ChainClient(url={self.url!r})"

    @property
    def escrow_public_key(self) -> str:
        return "0x" + self._keypair().public_key.hex()

    def _keypair(self) -> Keypair:
        if self._escrow is None:
            raise ChainRequestError("no escrow key configured (VILOKANAM_ESCROW_URI)")
        return self._escrow

    # -- plumbing ---------------------------------------------------------------

    def _connect(self) -> SubstrateInterface:
        if self._api is None:  # cheap: the runtime metadata loads on first use
            self._api = SubstrateInterface(url=self.url, ws_options={"timeout": self._ws_timeout})
        return self._api

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            try:
                return fn(self._connect(), *args)
            except (OSError, WebSocketException, EOFError) as exc:
                self._drop()
                raise ChainUnavailable(f"the chain at {self.url} does not answer: "
                                       f"{type(exc).__name__}") from None
            except SubstrateRequestException as exc:
                raise ChainRequestError(str(exc)) from None
            except ChainRequestError:
                raise
            except Exception:
                # A decoding surprise (e.g. the chain was replaced under us): start
                # the next call from a fresh connection and fresh metadata.
                self._drop()
                raise

    def _drop(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            try:
                api.close()
            except Exception:  # it is already broken
                pass

    def close(self) -> None:
        """Drop the connection (without the lock: it also unblocks a stuck call)."""
        self._drop()

    def ping(self) -> bool:
        """Does the node answer right now? Waits at most a second for another
        call in flight (then it says False): a probe must not queue up threads."""
        if not self._lock.acquire(timeout=PING_LOCK_WAIT_S):
            return False
        try:
            response = self._connect().rpc_request("chain_getFinalizedHead", [])
            return bool(response.get("result"))
        except Exception:  # any failure means "not now"
            self._drop()
            return False
        finally:
            self._lock.release()

    # -- reading ----------------------------------------------------------------

    def genesis_hash(self) -> str:
        return self._call(lambda api: str(api.get_block_hash(0)))

    def finalized_head(self) -> BlockRef:
        def read(api: SubstrateInterface) -> BlockRef:
            head = api.get_chain_finalised_head()
            number = api.get_block_number(head)
            if head is None or number is None:
                raise ChainRequestError("the node has no finalized head")
            return BlockRef(int(number), str(head))
        return self._call(read)

    def block_hash(self, number: int) -> str | None:
        """The hash of block `number` of the node's chain (None if it has none).
        At or below the finalized head this is THE block of that number."""
        return self._call(lambda api: api.get_block_hash(number))

    def transfers_to(self, block_hash: str, public_key: str) -> list[Transfer]:
        """Every `Balances.Transfer` to `public_key` in the block, in event order.
        (A failed extrinsic leaves no Transfer event: its events roll back.)"""
        def read(api: SubstrateInterface) -> list[Transfer]:
            found = []
            for index, record in enumerate(api.get_events(block_hash)):
                event = record.value
                if (event.get("module_id"), event.get("event_id")) != ("Balances", "Transfer"):
                    continue
                attributes = event["attributes"]
                if public_key_hex(attributes["to"]) == public_key:
                    found.append(Transfer(index, public_key_hex(attributes["from"]),
                                          int(attributes["amount"])))
            return found
        return self._call(read)

    def block_extrinsics(self, block_hash: str) -> list[str]:
        """The block's extrinsics as 0x-hex SCALE bytes (undecoded)."""
        def read(api: SubstrateInterface) -> list[str]:
            response = api.rpc_request("chain_getBlock", [block_hash])
            block = response.get("result")
            if block is None:
                raise ChainRequestError(f"the node has no block {block_hash}")
            return [str(x) for x in block["block"]["extrinsics"]]
        return self._call(read)

    def account_nonce_at(self, public_key: str, block_hash: str) -> int:
        """The account's nonce in the state of `block_hash` (e.g. the finalized head)."""
        return self._call(lambda api: int(api.query(
            "System", "Account", [public_key], block_hash=block_hash).value["nonce"]))

    def accounts_exist(self, public_keys: list[str]) -> dict[str, bool]:
        """Does each account exist on chain (has a provider: free >= the ED)?"""
        def read(api: SubstrateInterface) -> dict[str, bool]:
            return {key: int(api.query("System", "Account", [key]).value["providers"]) > 0
                    for key in public_keys}
        return self._call(read)

    def existential_deposit(self) -> int:
        return self._call(lambda api: int(
            api.get_constant("Balances", "ExistentialDeposit").value))

    def free_balance(self, public_key: str) -> int:
        return self._call(lambda api: int(
            api.query("System", "Account", [public_key]).value["data"]["free"]))

    def outcome(self, block_hash: str, extrinsic_hash: str) -> Outcome:
        """ExtrinsicSuccess or ExtrinsicFailed (with its error) of an included
        extrinsic, and the fee its signer (the escrow) paid net of refunds."""
        escrow = self.escrow_public_key

        def read(api: SubstrateInterface) -> Outcome:
            receipt = api.retrieve_extrinsic_by_hash(block_hash, extrinsic_hash)
            fee = 0
            for record in receipt.triggered_events:
                event = record.value
                if event.get("module_id") != "Balances":
                    continue
                who = event["attributes"].get("who") if isinstance(
                    event["attributes"], dict) else None
                if who is None or public_key_hex(who) != escrow:
                    continue
                if event["event_id"] == "Withdraw":
                    fee += int(event["attributes"]["amount"])
                elif event["event_id"] == "Deposit":
                    fee -= int(event["attributes"]["amount"])
            error = None
            if not receipt.is_success:
                message = receipt.error_message or {}
                error = str(message.get("name") or message.get("type") or "ExtrinsicFailed")
            return Outcome(bool(receipt.is_success), error, fee)
        return self._call(read)

    # -- writing ----------------------------------------------------------------

    def sign_payout_batch(self, payouts: list[tuple[str, int]], remark: bytes,
                          era_period: int = ERA_PERIOD) -> SignedExtrinsic:
        """ONE `Utility.batch_all` of `Balances.transfer_keep_alive(dest, planck)`
        per payout plus a `System.remark(remark)`, signed by the escrow with its
        next nonce and a mortal era counted from the finalized head: all or
        nothing on chain, and dead for good once the era is over."""
        keypair = self._keypair()

        def sign(api: SubstrateInterface) -> SignedExtrinsic:
            calls = [api.compose_call("Balances", "transfer_keep_alive", {
                "dest": key, "value": planck}) for key, planck in payouts]
            calls.append(api.compose_call("System", "remark", {"remark": remark}))
            batch = api.compose_call("Utility", "batch_all", {"calls": calls})
            head = api.get_chain_finalised_head()
            current = int(api.get_block_number(head))
            nonce = int(api.get_account_nonce(keypair.ss58_address))
            era = {"period": era_period, "current": current}  # birth = current: `head`
            extrinsic = api.create_signed_extrinsic(call=batch, keypair=keypair, era=dict(era),
                                                    nonce=nonce)
            era_obj = api.runtime_config.create_scale_object("Era")
            era_obj.encode(era)
            return SignedExtrinsic(
                extrinsic_hash="0x" + extrinsic.extrinsic_hash.hex(),
                extrinsic=str(extrinsic.data), nonce=nonce, signed_at=current,
                signed_at_hash=str(head), era_death=int(era_obj.death(current)),
                genesis_hash=str(api.get_block_hash(0)))
        return self._call(sign)

    def submit(self, extrinsic: str) -> SubmitResult:
        """Hand the signed bytes to the node's pool (no waiting). Submitting the
        same bytes again is harmless: one nonce is included at most once."""
        def send(api: SubstrateInterface) -> SubmitResult:
            try:
                api.rpc_request("author_submitExtrinsic", [extrinsic])
            except SubstrateRequestException as exc:
                return _submit_error(exc)
            return SubmitResult(Submitted.ACCEPTED)
        return self._call(send)


def _submit_error(exc: SubstrateRequestException) -> SubmitResult:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    code, message = error.get("code"), str(error.get("message", exc))
    if code in (_POOL_ALREADY_IMPORTED, _POOL_TOO_LOW_PRIORITY, _POOL_TEMPORARILY_BANNED):
        return SubmitResult(Submitted.ALREADY_KNOWN, message)
    if code == _POOL_INVALID and "stale" in message.lower():
        return SubmitResult(Submitted.STALE, message)
    if code == _POOL_INVALID:
        return SubmitResult(Submitted.REJECTED, message)
    raise ChainRequestError(message)


def extrinsic_hash_of(extrinsic: str) -> str:
    """blake2b-256 of the SCALE bytes: what the node calls the extrinsic's hash."""
    return "0x" + hashlib.blake2b(bytes.fromhex(extrinsic.removeprefix("0x")),
                                  digest_size=32).hexdigest()


class AsyncChain:
    """The event loop's facade: every call runs in a thread (to_thread)."""

    def __init__(self, client: ChainClient) -> None:
        self.client = client
        self.last_answer: float | None = None  # time.monotonic() of the last answer

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        result = await asyncio.to_thread(fn, *args, **kwargs)
        self.last_answer = time.monotonic()
        return result

    def answered_within(self, seconds: float) -> bool:
        return self.last_answer is not None and time.monotonic() - self.last_answer <= seconds

    @property
    def escrow_public_key(self) -> str:
        return self.client.escrow_public_key

    async def ping(self) -> bool:
        answered = await asyncio.to_thread(self.client.ping)
        if answered:
            self.last_answer = time.monotonic()
        return answered

    async def genesis_hash(self) -> str:
        return await self._run(self.client.genesis_hash)

    async def finalized_head(self) -> BlockRef:
        return await self._run(self.client.finalized_head)

    async def block_hash(self, number: int) -> str | None:
        return await self._run(self.client.block_hash, number)

    async def transfers_to(self, block_hash: str, public_key: str) -> list[Transfer]:
        return await self._run(self.client.transfers_to, block_hash, public_key)

    async def block_extrinsics(self, block_hash: str) -> list[str]:
        return await self._run(self.client.block_extrinsics, block_hash)

    async def account_nonce_at(self, public_key: str, block_hash: str) -> int:
        return await self._run(self.client.account_nonce_at, public_key, block_hash)

    async def accounts_exist(self, public_keys: list[str]) -> dict[str, bool]:
        return await self._run(self.client.accounts_exist, public_keys)

    async def existential_deposit(self) -> int:
        return await self._run(self.client.existential_deposit)

    async def free_balance(self, public_key: str) -> int:
        return await self._run(self.client.free_balance, public_key)

    async def outcome(self, block_hash: str, extrinsic_hash: str) -> Outcome:
        return await self._run(self.client.outcome, block_hash, extrinsic_hash)

    async def sign_payout_batch(self, payouts: list[tuple[str, int]], remark: bytes,
                                era_period: int = ERA_PERIOD) -> SignedExtrinsic:
        return await self._run(self.client.sign_payout_batch, payouts, remark, era_period)

    async def submit(self, extrinsic: str) -> SubmitResult:
        return await self._run(self.client.submit, extrinsic)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
