"""The SFU worker with real aiortc peers over loopback: a publisher's encoded
frames reach every viewer without being decoded or re-encoded; lifecycle rows
follow; every refusal has its code; nothing leaks."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from routing.registry import stream_worker_key
from sfu.aiortc_hooks import EncodedFrameTap
from sfu.relay import ForwardedTrack
from sfu.srtp import GcmProtector
from sfu.streams import CLOCK_LOOPS, StreamManager
from tests.conftest import Stores
from tests.flushing import flush_all
from tests.media_clients import Publisher, Viewer
from tests.sfu_in_process import Worker, make_stream, make_viewer_user
from tests.waiting import wait_until
from vilokanam.balances import balance_key


async def stream_status(db: asyncpg.Connection, stream_id: str, status: str) -> bool:
    return bool(await db.fetchval("SELECT status FROM streams WHERE id = $1", stream_id)
                == status)


@pytest.fixture
def encoders_that_ran(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """ids of every aiortc encoder instance whose encode() ran in this process
    (the test's own publisher encodes, so the set is never trivially empty)."""
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.codecs.vpx import Vp8Encoder

    ran: set[int] = set()
    for cls in (Vp8Encoder, H264Encoder, OpusEncoder):
        original = cls.encode

        def counting(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            ran.add(id(self))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "encode", counting)
    return ran


async def test_one_publisher_two_viewers_forwarded_without_reencode(
        worker: Worker, db: asyncpg.Connection, redis: aioredis.Redis,
        encoders_that_ran: set[int]) -> None:
    stream_id, _ = await make_stream(db)
    events = redis.pubsub()
    await events.subscribe(f"vk:stream:{stream_id}:events")
    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    session_id = worker.last["session_id"]
    viewers = [Viewer(), Viewer()]
    for number, viewer in enumerate(viewers):
        user = await make_viewer_user(worker, db, f"viewer-{number}")
        await viewer.start(worker.signal_viewer(stream_id, user))
    try:
        for viewer in viewers:
            await viewer.wait_for_frames("video", 30)
            await viewer.wait_for_frames("audio", 30)
        assert_no_codec_ran_in_the_worker(worker.manager, encoders_that_ran)

        stream = await db.fetchrow("SELECT * FROM streams WHERE id = $1", stream_id)
        assert stream["status"] == "live" and stream["start_time"] is not None
        assert stream["viewer_count"] == 2
        session = await db.fetchrow("SELECT * FROM stream_sessions WHERE id = $1", session_id)
        assert session["sfu_server_url"] == worker.manager.control_url
        assert session["signaling_server_url"] == "http://sig"
        assert session["viewer_peak"] == 2 and session["end_time"] is None
        rows = await db.fetch("SELECT * FROM stream_viewers WHERE stream_id = $1", stream_id)
        assert len(rows) == 2 and all(r["is_active"] for r in rows)
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.close()
    assert {"type": "stream_started", "stream_id": stream_id,
            "session_id": session_id} in await _drain(events)
    await events.aclose()


def assert_no_codec_ran_in_the_worker(manager: StreamManager, encoded: set[int]) -> None:
    """The publisher's receivers feed taps (their decoder threads get nothing),
    and no viewer sender ever made an encoder: aiortc's per-viewer RTP loop is
    off the path, the SFU wrote and sent the viewers' packets itself."""
    assert encoded, "the client publisher encodes: the instrumentation must see it"
    peers = list(manager.peers.values())
    publisher = next(p for p in peers if p.role == "publisher")
    for transceiver in publisher.pc.getTransceivers():
        queue = transceiver.receiver._RTCRtpReceiver__decoder_queue
        assert isinstance(queue, EncodedFrameTap)
    for viewer in (p for p in peers if p.role == "viewer"):
        for transceiver in viewer.pc.getTransceivers():
            track = transceiver.sender.track
            assert isinstance(track, ForwardedTrack) and track.frames_sent > 0
            assert track.packets_sent >= track.frames_sent
            assert transceiver.sender._RTCRtpSender__encoder is None
            # aiortc peers negotiate AES-GCM: the forwarder's own SRTP protects it
            assert track._wiring is not None
            assert isinstance(getattr(track._wiring.protect, "__self__", None), GcmProtector)


async def _drain(pubsub: aioredis.client.PubSub, seconds: float = 0.5) -> list[dict]:
    """Every event published so far (and for `seconds` more)."""
    messages = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            messages.append(json.loads(message["data"]))
    return messages


async def test_publisher_leave_ends_stream_and_tells_viewers(
        worker: Worker, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    publisher_peer, session_id = worker.last["peer_id"], worker.last["session_id"]
    await viewer.start(worker.signal_viewer(stream_id, await make_viewer_user(worker, db, "v")))
    viewer_peer = worker.last["peer_id"]
    peer_events = redis.pubsub()
    await peer_events.subscribe(f"vk:peer:{viewer_peer}:events")
    await viewer.wait_for_frames("video", 5)

    async with worker.session.delete(worker.url(f"/control/peers/{publisher_peer}")) as resp:
        assert resp.status == 204
    assert {"type": "peer_closed", "peer_id": viewer_peer,
            "reason": "stream_ended"} in await _drain(peer_events)
    stream = await db.fetchrow("SELECT status, end_time, viewer_count FROM streams WHERE id = $1",
                               stream_id)
    assert (stream["status"], stream["viewer_count"]) == ("ended", 0)
    assert stream["end_time"] is not None
    assert await db.fetchval("SELECT end_time FROM stream_sessions WHERE id = $1",
                             session_id) is not None
    assert not await db.fetchval("SELECT bool_or(is_active) FROM stream_viewers")
    assert await redis.get(stream_worker_key(stream_id)) is None
    await viewer.close()
    await publisher.close()
    await peer_events.aclose()
    await _wait_for_zero(worker.manager)


async def _wait_for_zero(manager: StreamManager) -> None:
    idle = {"publishers": 0, "viewers": 0, "relays": 0, "peer_connections": 0, "streams": 0,
            "tasks": CLOCK_LOOPS + 1}  # the clock loops and the load monitor
    try:
        await wait_until(lambda: manager.stats() == idle, "the worker holding nothing",
                         timeout=5)
    except AssertionError:
        raise AssertionError(f"leaked: {manager.stats()}") from None


async def _offer(kinds: tuple[str, ...] = ("video", "audio"),
                 direction: str = "sendonly") -> str:
    from tests.media_clients import client_pc

    pc = client_pc()
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return str(sdp)


@pytest.mark.parametrize(("body", "status", "code"), [
    ("not json", 400, "bad_request"),
    ([], 400, "bad_request"),
    ({"sdp": 42}, 400, "bad_request"),
    ({"sdp": "hello"}, 400, "bad_sdp"),
    ({"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:garbage\r\n"}, 400, "bad_sdp"),
])
async def test_publisher_bad_bodies_are_refused_with_codes(
        worker: Worker, db: asyncpg.Connection, body: object, status: int, code: str) -> None:
    stream_id, _ = await make_stream(db)
    url = worker.url(f"/control/streams/{stream_id}/publisher")
    data = body if isinstance(body, str) else json.dumps(body)
    async with worker.session.post(url, data=data) as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code
    await _wait_for_zero(worker.manager)


async def test_no_supported_codec_and_too_many_tracks(worker: Worker,
                                                      db: asyncpg.Connection) -> None:
    stream_id, _ = await make_stream(db)
    path = f"/control/streams/{stream_id}/publisher"
    vp9_only = (await _offer(("video",))).replace("VP8/90000", "VP9/90000").replace(
        "H264/90000", "AV1/90000")
    assert await worker.post(path, {"sdp": vp9_only}) == (422, {"error": {
        "code": "no_supported_codec", "message": await _message(worker, path, vp9_only)}})
    status, body = await worker.post(path, {"sdp": await _offer(("video", "video", "audio"))})
    assert (status, body["error"]["code"]) == (422, "too_many_tracks")
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1", stream_id) == "pending"
    await _wait_for_zero(worker.manager)


async def _message(worker: Worker, path: str, sdp: str) -> str:
    _, body = await worker.post(path, {"sdp": sdp})
    return str(body["error"]["message"])


async def test_refusals_by_state_and_capacity(worker: Worker, db: asyncpg.Connection) -> None:
    stream_id, _ = await make_stream(db)
    user = await make_viewer_user(worker, db, "viewer")
    status, body = await worker.post(f"/control/streams/{stream_id}/viewers",
                                     {"sdp": await _offer(direction="recvonly"),
                                      "viewer_user_id": user})
    assert (status, body["error"]["code"]) == (404, "stream_not_live")

    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    status, body = await worker.post(f"/control/streams/{stream_id}/publisher",
                                     {"sdp": await _offer()})
    assert (status, body["error"]["code"]) == (409, "already_live")

    status, body = await worker.post("/control/peers/nobody/candidates",
                                     {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"})
    assert (status, body["error"]["code"]) == (404, "unknown_peer")
    async with worker.session.delete(worker.url("/control/peers/nobody")) as resp:
        assert resp.status == 404
    peer = worker.last["peer_id"]
    status, body = await worker.post(f"/control/peers/{peer}/candidates",
                                     {"candidate": "not a candidate"})
    assert (status, body["error"]["code"]) == (400, "bad_candidate")
    assert (await worker.post(f"/control/peers/{peer}/candidates", {"candidate": None}))[0] == 204

    worker.manager.capacity = 1
    status, body = await worker.post(f"/control/streams/{stream_id}/viewers",
                                     {"sdp": await _offer(direction="recvonly"),
                                      "viewer_user_id": user})
    assert (status, body["error"]["code"]) == (503, "at_capacity")
    await publisher.close()


async def test_publisher_reconnecting_within_grace_resumes_session(
        worker: Worker, db: asyncpg.Connection) -> None:
    stream_id, _ = await make_stream(db)
    first, viewer = Publisher(), Viewer()
    await first.start(worker.signal_publisher(stream_id))
    first_peer, session_id = worker.last["peer_id"], worker.last["session_id"]
    await viewer.start(worker.signal_viewer(stream_id, await make_viewer_user(worker, db, "v")))
    await viewer.wait_for_frames("video", 10)

    await first.close()  # the publisher's connection is lost, not ended
    async with worker.session.delete(worker.url(f"/control/peers/{first_peer}?reason=lost")):
        pass
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1", stream_id) == "live"

    second = Publisher()
    await second.start(worker.signal_publisher(stream_id))
    assert worker.last["resumed"] is True and worker.last["session_id"] == session_id
    before = viewer.frames["video"]
    await viewer.wait_for_frames("video", before + 30)  # the same viewer connection goes on
    assert await db.fetchval("SELECT count(*) FROM stream_sessions") == 1
    await viewer.close()
    await second.close()


async def test_h264_is_forwarded_too(worker: Worker, db: asyncpg.Connection) -> None:
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    answer = await publisher.start(worker.signal_publisher(stream_id), video_codec="video/H264")
    assert "H264/90000" in answer and "VP8/90000" not in answer
    viewer_answer = await viewer.start(worker.signal_viewer(
        stream_id, await make_viewer_user(worker, db, "v")))
    assert "H264/90000" in viewer_answer and "VP8/90000" not in viewer_answer
    await viewer.wait_for_frames("video", 20)
    await viewer.close()
    await publisher.close()


async def test_analytics_rows_while_live(worker: Worker, db: asyncpg.Connection) -> None:
    worker.manager.analytics_every = 1  # every second, not every 10
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    await viewer.start(worker.signal_viewer(stream_id, await make_viewer_user(worker, db, "v")))
    await viewer.wait_for_frames("video", 5)

    async def two_rows() -> list[int] | None:
        counts = [r["viewer_count"] for r in await db.fetch(
            "SELECT viewer_count FROM stream_analytics WHERE stream_id = $1 "
            "ORDER BY timestamp", stream_id)]
        return counts if len(counts) >= 2 else None

    counts = await wait_until(two_rows, "two analytics rows, a second apart", timeout=2.2)
    assert counts[-1] == 1
    await viewer.close()
    await publisher.close()


async def test_a_publisher_that_dies_silently_ends_the_stream(
        worker: Worker, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DELETE, no DTLS close: the media simply stops (a crashed browser)."""
    import sfu.streams

    monkeypatch.setattr(sfu.streams, "MEDIA_TIMEOUT", 1.0)
    monkeypatch.setattr(sfu.streams, "RECONNECT_GRACE", 0.5)
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    await viewer.start(worker.signal_viewer(stream_id, await make_viewer_user(worker, db, "v")))
    await viewer.wait_for_frames("video", 5)
    for transceiver in publisher.pc.getTransceivers():
        transceiver.sender._enabled = False  # aiortc: read but send nothing; ICE stays up
    await wait_until(lambda: stream_status(db, stream_id, "ended"), "the stream ending",
                     timeout=6, interval=0.1)
    await viewer.close()
    await publisher.close()
    await _wait_for_zero(worker.manager)


async def test_viewers_are_billed_per_second_received_and_books_balance(
        worker: Worker, db: asyncpg.Connection, redis: aioredis.Redis,
        stores: Stores) -> None:
    """Real aiortc viewers, the worker's own ticks, the real flush: every
    second a viewer was billed is in Postgres exactly once, at its price."""

    stream_id, _ = await make_stream(db)
    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    viewers = [Viewer(), Viewer()]
    for n, viewer in enumerate(viewers):
        await viewer.start(worker.signal_viewer(stream_id,
                                                await make_viewer_user(worker, db, f"v{n}")))
    await asyncio.sleep(4.5)  # time passing IS the test: 4.5 s watched bill 3 to 5 seconds
    meters = {p.viewer_session_id: p.meter.ticks for p in worker.manager.peers.values()
              if p.role == "viewer"}
    for viewer in viewers:
        await viewer.close()
    await publisher.close()
    assert all(3 <= ticks <= 5 for ticks in meters.values()), meters
    await flush_all(stores.database_url, redis)
    rows = {str(r["id"]): r for r in await db.fetch(
        "SELECT id, total_ticks, paid_amount FROM stream_viewers")}
    for session, ticks in meters.items():
        assert rows[session]["total_ticks"] >= ticks  # ticks of the last second may follow
        assert rows[session]["paid_amount"] == rows[session]["total_ticks"] * Decimal("0.001")
    total = sum(r["total_ticks"] for r in rows.values())
    assert await db.fetchval("SELECT total_ticks FROM streams WHERE id = $1", stream_id) == total


async def test_a_viewer_is_cut_off_in_the_second_the_money_runs_out(
        worker: Worker, db: asyncpg.Connection, redis: aioredis.Redis) -> None:
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    user = await make_viewer_user(worker, db, "poor", funds=Decimal("0.003"))  # 3 seconds
    await viewer.start(worker.signal_viewer(stream_id, user))
    peer_id = worker.last["peer_id"]
    events = redis.pubsub()
    await events.subscribe(f"vk:peer:{peer_id}:events")
    await viewer.wait_for_frames("video", 5)
    closed = None
    for _ in range(80):
        closed = next((e for e in await _drain(events, 0.1) if e["type"] == "peer_closed"), None)
        if closed:
            break
    assert closed == {"type": "peer_closed", "peer_id": peer_id, "reason": "insufficient_funds"}
    live = int(await redis.get(balance_key(user)))
    assert live == 0  # three whole seconds, then cut: never below zero here
    assert peer_id not in worker.manager.peers
    await events.aclose()
    await viewer.close()
    await publisher.close()


async def test_a_viewer_that_sends_no_receiver_reports_is_not_billed(
        worker: Worker, db: asyncpg.Connection) -> None:
    """Its network died: frames may still be handed to its sender, but no
    RTCP report comes back, so no second is billed."""
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    await viewer.start(worker.signal_viewer(stream_id,
                                            await make_viewer_user(worker, db, "v")))
    await viewer.wait_for_frames("video", 5)
    peer = next(p for p in worker.manager.peers.values() if p.role == "viewer")
    # billed while its reports arrived
    await wait_until(lambda: peer.meter.ticks > 0, "a billed second", timeout=5, interval=0.1)

    async def lost(packet: object) -> None:  # from now on its RTCP never arrives
        return None

    for transceiver in peer.pc.getTransceivers():
        transceiver.sender._handle_rtcp_packet = lost
    peer.meter.last_report_at = float("-inf")
    before = peer.meter.ticks
    await asyncio.sleep(2.5)  # time passing IS the test: 2.5 s without reports bill nothing
    assert peer.meter.ticks == before
    assert sum(track.frames_sent for _, track in peer.tracks) > 0  # media was still sent
    await viewer.close()
    await publisher.close()


async def test_the_control_api_ends_a_stream_on_request(
        worker: Worker, db: asyncpg.Connection) -> None:
    """What POST /api/streams/{id}/end asks of the worker carrying the stream."""
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    await viewer.start(worker.signal_viewer(stream_id, await make_viewer_user(worker, db, "v")))
    await viewer.wait_for_frames("video", 5)
    assert await worker.post(f"/control/streams/{stream_id}/end", {}) == (200, {"ended": True})
    assert await db.fetchval("SELECT status FROM streams WHERE id = $1", stream_id) == "ended"
    assert await worker.post(f"/control/streams/{stream_id}/end", {}) == (200, {"ended": False})
    await viewer.close()
    await publisher.close()
    await _wait_for_zero(worker.manager)


async def test_packets_lost_on_the_way_to_a_viewer_come_back_from_the_history(
        worker: Worker, db: asyncpg.Connection) -> None:
    """A viewer's link that drops every 8th video packet: the viewer's NACKs
    are answered from the stream's packet history over RTX, and it goes on
    decoding at full rate."""
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    await viewer.start(worker.signal_viewer(stream_id,
                                            await make_viewer_user(worker, db, "lossy")))
    await viewer.wait_for_frames("video", 5)
    peer = next(p for p in worker.manager.peers.values() if p.role == "viewer")
    track = next(t for _, t in peer.tracks if t.kind == "video")
    wiring = track._wiring
    assert wiring is not None and wiring.rtx_payload_type is not None
    clean_send, media_ssrc = wiring.send, wiring.ssrc.to_bytes(4, "big")
    dropped = seen = 0

    def lossy(datagram: bytes) -> bool:
        nonlocal dropped, seen
        if datagram[8:12] == media_ssrc:
            seen += 1
        if datagram[8:12] == media_ssrc and seen % 8 == 3:
            dropped += 1
            return True  # "sent", never arrives
        return clean_send(datagram)

    wiring.send = lossy  # type: ignore[method-assign]
    before = viewer.frames["video"]
    await viewer.wait_for_frames("video", before + 60)
    assert dropped > 5  # the fault landed
    assert track.retransmitted > 0
    await viewer.close()
    await publisher.close()


async def test_an_overloaded_worker_refuses_new_viewers_and_keeps_its_stream(
        worker: Worker, db: asyncpg.Connection) -> None:
    """The loop is kept busy (a callback that hogs it 250 ms of every 260): the
    worker measures it, refuses the next viewer with `at_capacity`, reports
    itself full to placement, and the publisher and the viewer it has stay."""
    stream_id, _ = await make_stream(db)
    publisher, viewer = Publisher(), Viewer()
    await publisher.start(worker.signal_publisher(stream_id))
    await viewer.start(worker.signal_viewer(stream_id,
                                            await make_viewer_user(worker, db, "first")))
    await viewer.wait_for_frames("video", 5)
    # Made before the hog: nothing between "measured overloaded" and the offer
    # then waits behind it.
    second = {"sdp": await _offer(direction="recvonly"),
              "viewer_user_id": await make_viewer_user(worker, db, "second")}
    loop = asyncio.get_running_loop()
    hogging = True

    def hog() -> None:
        # Held by the wall clock, 250 ms: on an idle core that is ~96% CPU (over
        # the CPU limit); on a shared one the loop's timers fire >= 150 ms late
        # (over the lag limit) however little CPU the process gets. A hog of
        # CPU time (150 ms in 160) fell between the two limits on a half-loaded
        # machine (~190 ms wall: lag ~90 ms, CPU ~0.78), and the worker measured
        # itself overloaded, then not, and took the next viewer.
        end = time.monotonic() + 0.25
        while time.monotonic() < end:
            pass
        if hogging:
            loop.call_later(0.01, hog)

    manager = worker.manager
    manager.load_monitor.max_cpu, manager.load_monitor.max_lag = 0.85, 0.1  # the defaults
    hog()
    try:
        for _ in range(60):
            if manager.load_monitor.overloaded():
                break
            await asyncio.sleep(0.05)
        assert manager.load_monitor.overloaded()  # the fault landed
        assert manager.load == manager.capacity  # placement sees a full worker
        status, body = await worker.post(f"/control/streams/{stream_id}/viewers", second)
        assert (status, body["error"]["code"]) == (503, "at_capacity")
    finally:
        hogging = False
    for _ in range(60):
        if not manager.load_monitor.overloaded():
            break
        await asyncio.sleep(0.05)
    assert publisher.pc.connectionState == "connected"
    before = viewer.frames["video"]
    await viewer.wait_for_frames("video", before + 10)
    late, user = Viewer(), await make_viewer_user(worker, db, "third")
    offer, status, body = await _offer(direction="recvonly"), 503, {}
    for _ in range(50):  # the load is gone: a new viewer is taken again
        status, body = await worker.post(f"/control/streams/{stream_id}/viewers",
                                         {"sdp": offer, "viewer_user_id": user})
        if status != 503:
            break
        await asyncio.sleep(0.2)  # a lag spike of the shared machine: ask again
    assert status == 201, body
    await worker.session.delete(worker.url(f"/control/peers/{body['peer_id']}"))
    for client in (late, viewer, publisher):
        await client.close()


async def test_concurrent_offers_never_pass_the_capacity(
        worker: Worker, db: asyncpg.Connection) -> None:
    stream_id, _ = await make_stream(db)
    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    worker.manager.capacity = 3  # the publisher and two viewers
    # The count is this test's subject; the load refusal has its own test above
    # (on a shared CI machine five answers at once can trip it: all five 503).
    worker.manager.load_monitor.max_cpu = worker.manager.load_monitor.max_lag = float("inf")
    users = [await make_viewer_user(worker, db, f"c{n}") for n in range(5)]
    offers = [await _offer(direction="recvonly") for _ in users]
    results = await asyncio.gather(*(
        worker.post(f"/control/streams/{stream_id}/viewers",
                    {"sdp": offer, "viewer_user_id": user})
        for offer, user in zip(offers, users, strict=True)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 201, 503, 503, 503], results
    assert {body["error"]["code"] for status, body in results if status == 503} == {"at_capacity"}
    assert len(worker.manager.peers) == 3
    for status, body in results:
        if status == 201:
            await worker.session.delete(worker.url(f"/control/peers/{body['peer_id']}"))
    # the viewer gauge follows leaves (it once counted each leaving viewer still)
    assert REGISTRY.get_sample_value("vilokanam_sfu_viewers") == 0
    await publisher.close()


async def test_a_viewer_row_written_during_a_failed_answer_is_undone(
        worker: Worker, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The viewer row is written while the answer is made: a refused offer
    writes none, and a join whose answer fails after the offer was taken
    (the fault injected here) leaves its row inactive and the count at 0."""
    import sfu.peers

    stream_id, _ = await make_stream(db)
    publisher = Publisher()
    await publisher.start(worker.signal_publisher(stream_id))
    try:
        user = await make_viewer_user(worker, db, "viewer-undone")
        path = f"/control/streams/{stream_id}/viewers"
        vp9_only = (await _offer(("video",), "recvonly")).replace(
            "VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000")
        status, body = await worker.post(path, {"sdp": vp9_only, "viewer_user_id": user})
        assert (status, body["error"]["code"]) == (422, "no_supported_codec")
        assert await db.fetchval("SELECT count(*) FROM stream_viewers WHERE stream_id = $1",
                                 stream_id) == 0

        async def failing_answer(*_args: object) -> str:
            raise sfu.peers.BadSdp("injected: the answer failed")

        monkeypatch.setattr(sfu.peers, "_answer", failing_answer)
        status, body = await worker.post(path, {"sdp": await _offer(direction="recvonly"),
                                                "viewer_user_id": user})
        assert (status, body["error"]["code"]) == (400, "bad_sdp")
        assert "injected" in body["error"]["message"]  # the fault landed
        rows = await wait_until(lambda: db.fetch(
            "SELECT is_active FROM stream_viewers WHERE stream_id = $1 AND NOT is_active",
            stream_id), "the failed join's row undone")
        assert len(rows) == 1
        assert await db.fetchval("SELECT count(*) FROM stream_viewers WHERE stream_id = $1",
                                 stream_id) == 1
        await wait_until(lambda: stream_count_is(db, stream_id, 0), "the viewer count back")
    finally:
        await publisher.close()


async def stream_count_is(db: asyncpg.Connection, stream_id: str, count: int) -> bool:
    return bool(await db.fetchval("SELECT viewer_count FROM streams WHERE id = $1",
                                  stream_id) == count)
