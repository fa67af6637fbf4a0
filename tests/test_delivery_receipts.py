"""Viewer-signed delivery receipts through the real signaling app, Postgres
and Redis: a wallet-signed delegation makes a session `signed`; cumulative
receipts signed by the session key raise its signed seconds; bad, foreign,
replayed, backwards, ahead-of-meter and wrongly priced receipts are refused
and counted; the flush bills a signed session at most its signed seconds +
the grace (the rest refunded); the viewer is cut off when receipts stop; a
stream may require signed receipts. The SFU worker's HTTP door is the
protocol tests' FakeWorker, here writing the real worker's stream_viewers
rows (sfu/lifecycle.py); the browser side is tests/test_browser_receipts.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from substrateinterface import Keypair, KeypairType

from billing.flush import Flusher
from sfu.lifecycle import Lifecycle
from signaling.tokens import issue_token
from tests.flushing import drain
from tests.test_ws_protocol import (
    SECRET,
    TIMEOUT,
    FakeWorker,
    Harness,
    Socket,
    ask,
    error_code,
    eventually,
    metric,
    running,
    watch,
)
from vilokanam import live_ticks
from vilokanam.accounts import canonical_account
from vilokanam.balances import balance_key, credit
from vilokanam.config import Settings
from vilokanam.delivery import GRACE_SECONDS, delegation_text, receipt_text
from vilokanam.metering import LIVE_CHANNEL, Tick, TickBatch, TickWriter
from vilokanam.money import to_planck

PRICE = Decimal("0.001")


class RowsWorker(FakeWorker):
    """The fake worker's door, answering a viewer with a real viewer session
    row written by the worker's own SQL (Lifecycle.viewer_joined)."""

    lifecycle: Lifecycle
    sessions: dict[str, str]  # stream id -> stream_sessions id

    async def _viewer(self, request: web.Request) -> web.Response:
        body = await request.json()
        stream_id = request.match_info["stream_id"]
        if stream_id not in self.sessions:
            self.sessions[stream_id] = await self.lifecycle.stream_started(
                stream_id, self.control_url, "http://signaling")
        viewer_session, _, _ = await self.lifecycle.viewer_joined(
            stream_id, self.sessions[stream_id], body["viewer_user_id"], "rows-worker")
        return await self._answer(request, {"viewer_session_id": viewer_session})


@pytest.fixture
async def h(settings: Settings, redis: aioredis.Redis, db: asyncpg.Connection,
            pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    import tests.test_ws_protocol as protocol_tests

    RowsWorker.lifecycle, RowsWorker.sessions = Lifecycle(pool), {}
    monkeypatch.setattr(protocol_tests, "FakeWorker", RowsWorker)  # the harness's worker class
    async with running(settings, redis, db) as harness:
        yield harness


async def priced_stream(h: Harness, require: bool = False) -> str:
    ws, stream_id, _ = await h.publishing()
    await h.db.execute("UPDATE streams SET price_per_second = $2, require_signed_receipts = $3 "
                       "WHERE id = $1::uuid", stream_id, PRICE, require)
    return stream_id


class Viewer:
    """A browser viewer as the watch page is one: a wallet key (sr25519) and a
    session key (Ed25519) made for this watch."""

    def __init__(self) -> None:
        self.wallet = Keypair.create_from_uri(f"//Viewer{uuid.uuid4().hex}", ss58_format=42)
        self.account = canonical_account(self.wallet.ss58_address, 42)
        self.session_key = Keypair.create_from_mnemonic(Keypair.generate_mnemonic(),
                                                        crypto_type=KeypairType.ED25519)
        self.user_id = ""
        self.token = ""

    def delegation(self, stream_id: str, cap: Decimal = PRICE,
                   expires_in: int = 3600, signer: Keypair | None = None) -> dict[str, Any]:
        expires_at = int(time.time()) + expires_in
        text = delegation_text(self.account, stream_id, self.session_key.public_key, cap,
                               expires_at)
        signature = (signer or self.wallet).sign(b"<Bytes>" + text.encode() + b"</Bytes>")
        return {"session_key": "0x" + self.session_key.public_key.hex(), "price_cap": str(cap),
                "expires_at": expires_at, "signature": "0x" + signature.hex()}

    def receipt(self, session: str, seconds: int, amount: Decimal | None = None,
                key: Keypair | None = None) -> dict[str, Any]:
        amount = seconds * PRICE if amount is None else amount
        signature = (key or self.session_key).sign(receipt_text(session, seconds, amount))
        return {"type": "receipt", "viewer_session_id": session, "seconds": seconds,
                "amount": str(amount), "signature": "0x" + signature.hex()}


async def signed_in(h: Harness, viewer: Viewer) -> Viewer:
    viewer.user_id = str(await h.db.fetchval(
        "INSERT INTO users (account_id) VALUES ($1) RETURNING id", viewer.account))
    await credit(h.db, h.redis, viewer.user_id, Decimal(100), "adjustment", "funds", 12)
    viewer.token = issue_token(SECRET, viewer.user_id, viewer.account)
    return viewer


async def watching(h: Harness, stream_id: str, viewer: Viewer,
                   delegation: dict[str, Any] | None) -> tuple[Socket, dict[str, Any]]:
    ws = await h.connect()
    answer = await ask(ws, {**watch(stream_id, viewer.token), "delegation": delegation})
    return ws, answer


async def metered(h: Harness, seconds: int) -> None:
    """What the worker's tick script publishes each second for this viewer."""
    await h.redis.publish(LIVE_CHANNEL, live_ticks.encode(
        [h.worker.last_peer], [seconds], [to_planck(PRICE, 12)], 12))


async def next_message(ws: Socket, kind: str) -> dict[str, Any]:
    while True:
        message = dict(await ws.receive_json(timeout=TIMEOUT))
        if message["type"] == kind or message["type"] == "error":
            return message


async def test_a_signed_session_keeps_its_receipts_and_refuses_bad_ones(h: Harness) -> None:
    stream_id = await priced_stream(h)
    viewer = await signed_in(h, Viewer())
    ws, answer = await watching(h, stream_id, viewer, viewer.delegation(stream_id))
    assert answer["type"] == "answer", answer
    session = answer["viewer_session_id"]
    row = await h.db.fetchrow("SELECT billing_rule, signed_seconds FROM stream_viewers "
                              "WHERE id = $1::uuid", session)
    assert (row["billing_rule"], row["signed_seconds"]) == ("signed", 0)
    delegation = await h.db.fetchrow("SELECT * FROM viewer_delegations")
    assert delegation["session_key"] == "0x" + viewer.session_key.public_key.hex()
    assert delegation["message"].startswith(f"vilokanam:delegation:v1:{viewer.account}:")

    await metered(h, 10)
    assert (await next_message(ws, "tick"))["seconds"] == 10
    accepted = await ask(ws, viewer.receipt(session, 10))
    assert accepted == {"type": "receipt_accepted", "viewer_session_id": session, "seconds": 10}
    assert await h.db.fetchval("SELECT signed_seconds FROM stream_viewers") == 10
    kept = await h.db.fetchrow("SELECT * FROM delivery_receipts")
    assert (kept["seconds"], kept["amount"]) == (10, 10 * PRICE)

    refused = {reason: metric("vilokanam_delivery_receipts_total", outcome=reason)
               for reason in ("bad_signature", "replayed", "backwards", "ahead_of_meter",
                              "wrong_amount", "other_session")}
    stranger = Keypair.create_from_mnemonic(Keypair.generate_mnemonic(),
                                            crypto_type=KeypairType.ED25519)
    cases = {
        "bad_signature": viewer.receipt(session, 12, key=stranger),
        "replayed": viewer.receipt(session, 10),
        "backwards": viewer.receipt(session, 9),
        "ahead_of_meter": viewer.receipt(session, 10 + GRACE_SECONDS + 1),
        "wrong_amount": viewer.receipt(session, 12, amount=Decimal("0.011")),
        "other_session": viewer.receipt(str(uuid.uuid4()), 12),
    }
    for reason, receipt in cases.items():
        await ws.send_json(receipt)
        reply = await ws.receive_json(timeout=TIMEOUT)
        assert reply["type"] == "error" and reply["code"] == "receipt_refused", reply
        assert reply["message"].startswith(reason), reply
        assert metric("vilokanam_delivery_receipts_total", outcome=reason) == refused[reason] + 1
    for malformed in ({"type": "receipt"}, {**viewer.receipt(session, 12), "seconds": "12"},
                      {**viewer.receipt(session, 12), "signature": "0x12"}):
        assert await error_code(ws, malformed) == "bad_request"
    # Nothing refused was kept or billed.
    assert await h.db.fetchval("SELECT count(*) FROM delivery_receipts") == 1
    assert await h.db.fetchval("SELECT signed_seconds FROM stream_viewers") == 10
    assert (await ask(ws, viewer.receipt(session, 20)))["seconds"] == 20  # within the grace


async def test_the_flush_bills_a_signed_session_at_most_its_signed_seconds_plus_grace(
        h: Harness, pool: asyncpg.Pool) -> None:
    stream_id = await priced_stream(h)
    signer, plain = await signed_in(h, Viewer()), await signed_in(h, Viewer())
    ws, answer = await watching(h, stream_id, signer, signer.delegation(stream_id))
    signed_session = answer["viewer_session_id"]
    _, plain_answer = await watching(h, stream_id, plain, None)
    plain_session = plain_answer["viewer_session_id"]
    assert await h.db.fetchval("SELECT billing_rule FROM stream_viewers WHERE id = $1::uuid",
                               plain_session) == "meter"
    await metered(h, 5)
    assert (await ask(ws, signer.receipt(signed_session, 5)))["type"] == "receipt_accepted"

    writer, flusher = TickWriter(h.redis), Flusher(pool, h.redis, Decimal("0.1"))
    for second in range(50_000, 50_030):
        await writer.write(TickBatch("w1", second, (
            Tick(signed_session, signer.user_id, 10**9),
            Tick(plain_session, plain.user_id, 10**9))))
        if second % 7 == 0:
            await flusher.flush_once()
    await drain(flusher)
    rows = {r["id"]: r for r in await h.db.fetch(
        "SELECT id::text, total_ticks, paid_amount FROM stream_viewers")}
    billed = 5 + GRACE_SECONDS
    assert (rows[signed_session]["total_ticks"],
            rows[signed_session]["paid_amount"]) == (billed, billed * PRICE)
    assert (rows[plain_session]["total_ticks"], rows[plain_session]["paid_amount"]) == (
        30, 30 * PRICE)
    # The ticks beyond the signed seconds + grace were charged live, and given back.
    assert int(await h.redis.get(balance_key(signer.user_id))) == (100 - billed * PRICE) * 10**12
    assert int(await h.redis.get(balance_key(plain.user_id))) == (100 - 30 * PRICE) * 10**12


async def test_a_viewer_whose_receipts_stop_is_cut_off(h: Harness) -> None:
    stream_id = await priced_stream(h)
    viewer = await signed_in(h, Viewer())
    ws, answer = await watching(h, stream_id, viewer, viewer.delegation(stream_id))
    peer = h.worker.last_peer
    await metered(h, GRACE_SECONDS)  # the first receipt may still come
    assert (await next_message(ws, "tick"))["seconds"] == GRACE_SECONDS
    await metered(h, GRACE_SECONDS + 1)
    await next_message(ws, "tick")
    reply = await next_message(ws, "error")
    assert reply["code"] == "receipts_stopped", reply
    await eventually(lambda: any(path == f"/control/peers/{peer}"
                                 for _, path, _ in h.worker.requests_to("DELETE")),
                     "the worker is told to close the peer")
    assert await error_code(ws, viewer.receipt(answer["viewer_session_id"], 5)) == \
        "receipt_refused"  # the session is over


async def test_delegations_are_checked_and_a_stream_may_require_them(h: Harness) -> None:
    stream_id = await priced_stream(h, require=True)
    viewer = await signed_in(h, Viewer())
    ws = await h.connect()
    assert await error_code(ws, watch(stream_id, viewer.token)) == "receipts_required"
    other_wallet = Keypair.create_from_uri(f"//Other{uuid.uuid4().hex}")
    for delegation in (viewer.delegation(stream_id, signer=other_wallet),
                       viewer.delegation(stream_id, cap=PRICE / 2),
                       viewer.delegation(stream_id, expires_in=-1),
                       viewer.delegation(stream_id, expires_in=10 * 24 * 3600),
                       viewer.delegation(str(uuid.uuid4()))):  # signed for another stream
        message = {**watch(stream_id, viewer.token), "delegation": delegation}
        assert await error_code(ws, message) == "delegation_refused"
    for bad in ("x", {"session_key": "0x12"}, {**viewer.delegation(stream_id),
                                                "expires_at": "soon"}):
        message = {**watch(stream_id, viewer.token), "delegation": bad}
        assert await error_code(ws, message) == "bad_request"
    assert await h.db.fetchval("SELECT count(*) FROM stream_viewers") == 0  # nobody admitted
    answer = await ask(ws, {**watch(stream_id, viewer.token),
                            "delegation": viewer.delegation(stream_id)})
    assert answer["type"] == "answer", answer
    # Another socket (not watching this session) may not send its receipts.
    other = await h.connect()
    assert await error_code(other, viewer.receipt(answer["viewer_session_id"], 1)) == \
        "receipt_refused"
