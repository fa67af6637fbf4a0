"""The recorder (sfu/recorder.py): frames muxed as they are into WebM, a file
cut by kill -9 still playable up to the crash, recordings that become videos
(or fail with a reason), opt-out, and recordings of dead workers finished by
the media role's sweep (vilokanam/recordings.py). Real Postgres, real files."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import av
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media.probe import probe
from sfu.recorder import Recordings, vp8_size
from sfu.relay import Fanout
from signaling.stream_keys import hash_stream_key, new_stream_key
from tests.conftest import REPO
from tests.media_samples import webm
from tests.recorder_feeder import CODECS
from tests.test_api import ALICE_42
from vilokanam.config import Settings
from vilokanam.recordings import ORPHAN_AFTER_S, finish_orphans
from vilokanam.storage import storage_for


def test_vp8_keyframe_size() -> None:
    header = bytes([0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a]) + (640).to_bytes(2, "little") + \
        (480).to_bytes(2, "little")
    assert vp8_size(header) == (640, 480)
    assert vp8_size(bytes([0x51]) + header[1:]) is None  # an interframe
    assert vp8_size(b"\x00" * 4) is None


def test_a_recording_killed_mid_stream_is_playable_up_to_the_crash(tmp_path: Path) -> None:
    source = webm(tmp_path / "live.webm", seconds=8, width=160, height=120)
    target = tmp_path / "recording.webm"
    feeder = subprocess.Popen([sys.executable, "-m", "tests.recorder_feeder", str(source),
                               str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert feeder.stdout is not None
    try:
        for line in feeder.stdout:  # until 4 s of media went through the taps
            if line.startswith("fed video") and float(line.split()[2]) >= 4.0:
                break
        time.sleep(0.3)  # let the writer thread take what was fed (it flushes per frame)
    finally:
        feeder.kill()  # SIGKILL: no close(), no trailer
        feeder.wait()
    assert feeder.returncode == -9
    info = probe(target)  # a valid file...
    assert info.codec == "vp8" and info.audio_codec == "opus"
    assert (info.width, info.height) == (160, 120)
    assert 2.5 <= info.duration <= 5.5, info.duration  # ...up to about the crash
    with av.open(str(target)) as container:  # and every frame decodes
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 60


async def _stream(db: asyncpg.Connection, record: bool = True,
                  creator: bool = True) -> tuple[str, str]:
    if creator:
        await db.execute("INSERT INTO users (account_id, is_creator) VALUES ($1, TRUE)",
                         ALICE_42)
    creator_id = await db.fetchval("SELECT id FROM users WHERE account_id = $1", ALICE_42)
    stream_id = await db.fetchval(
        "INSERT INTO streams (creator_id, title, price_per_second, record, status, "
        "stream_key_hash) VALUES ($1, 'show', 0.002, $2, 'live', $3) RETURNING id::text",
        creator_id, record, hash_stream_key(new_stream_key()))
    session_id = await db.fetchval(
        "INSERT INTO stream_sessions (stream_id) VALUES ($1::uuid) RETURNING id::text",
        stream_id)
    return stream_id, session_id


def _fanouts() -> dict[str, Fanout]:
    return {kind: Fanout(kind, lambda: None) for kind in ("video", "audio")}


@pytest.fixture
async def pool(db: asyncpg.Connection, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    yield pool
    await pool.close()


async def test_recordings_become_videos_or_fail_with_a_reason(
        pool: asyncpg.Pool, db: asyncpg.Connection, tmp_path: Path) -> None:
    storage = storage_for(tmp_path / "media")
    recordings = Recordings(pool, storage)
    source = webm(tmp_path / "live.webm", seconds=2, width=160, height=120)
    stream_id, session_id = await _stream(db)
    fanouts = _fanouts()
    await recordings.start(stream_id, session_id, fanouts)
    assert all(len(f.taps) == 1 for f in fanouts.values())
    video_id = await db.fetchval("SELECT id::text FROM videos")
    assert await db.fetchval("SELECT status FROM videos") == "uploading"
    with av.open(str(source)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.time_base is not None:
                codec = CODECS[packet.stream.type]
                fed = av.Packet(bytes(packet))
                fed.pts = int(packet.pts * packet.time_base * codec.clockRate)
                fanouts[packet.stream.type].taps[0](codec, fed, bool(packet.is_keyframe))
    await recordings.finish(stream_id, fanouts)
    assert all(f.taps == [] for f in fanouts.values())
    row = await db.fetchrow("SELECT status, price_per_second, source_stream_id::text AS s, "
                            "file_size, title FROM videos")
    assert (row["status"], row["price_per_second"], row["s"], row["title"]) == (
        "processing", Decimal("0.002"), stream_id, "show")
    assert row["file_size"] == storage.path(f"videos/{video_id}/source").stat().st_size > 0
    assert await db.fetchval("SELECT recording_id::text FROM stream_sessions") == video_id
    assert await db.fetchval("SELECT recording_url FROM streams") == f"/api/videos/{video_id}"
    assert await db.fetchval("SELECT count(*) FROM processing_jobs") == 1

    # A session that sent no video: a failed video that says why, no job.
    stream2, empty_session = await _stream(db, creator=False)
    fanouts = _fanouts()
    await recordings.start(stream2, empty_session, fanouts)
    await recordings.finish(stream2, fanouts)
    row = await db.fetchrow("SELECT status, failure_reason FROM videos WHERE source_stream_id "
                            "= $1::uuid", stream2)
    assert row["status"] == "failed" and "no video" in row["failure_reason"]
    assert await db.fetchval("SELECT count(*) FROM processing_jobs") == 1

    # An H.264 publisher (OBS): not recorded yet, and the video says so.
    stream4, session4 = await _stream(db, creator=False)
    fanouts = _fanouts()
    await recordings.start(stream4, session4, fanouts)
    h264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
    frame = av.Packet(b"\x00\x00\x00\x01\x65" + b"\x00" * 50)
    frame.pts = 0
    fanouts["video"].taps[0](h264, frame, True)
    await recordings.finish(stream4, fanouts)
    reason = await db.fetchval("SELECT failure_reason FROM videos WHERE source_stream_id = "
                               "$1::uuid", stream4)
    assert "video/H264 is not recorded" in reason

    # "record": false: nothing is recorded.
    stream3, session3 = await _stream(db, record=False, creator=False)
    fanouts = _fanouts()
    await recordings.start(stream3, session3, fanouts)
    assert all(f.taps == [] for f in fanouts.values()) and stream3 not in recordings.active
    assert await db.fetchval("SELECT count(*) FROM videos WHERE source_stream_id = $1::uuid",
                             stream3) == 0


async def test_the_recording_of_a_dead_worker_is_finished_by_the_sweep(
        pool: asyncpg.Pool, db: asyncpg.Connection, tmp_path: Path) -> None:
    storage = storage_for(tmp_path / "media")
    stream_id, session_id = await _stream(db)
    await Recordings(pool, storage).start(stream_id, session_id, _fanouts())
    video_id = await db.fetchval("SELECT id::text FROM videos")
    webm(storage.path(f"videos/{video_id}/source"), seconds=1, width=64, height=48)
    assert await finish_orphans(pool, storage, 3) == 0  # the session is still live
    # The worker died; the reaper ended the session a while ago.
    await db.execute("UPDATE stream_sessions SET end_time = now() - make_interval(secs => $1)",
                     ORPHAN_AFTER_S + 1)
    assert await finish_orphans(pool, storage, 3) == 1
    row = await db.fetchrow("SELECT status, file_size FROM videos")
    assert row["status"] == "processing" and row["file_size"] > 0
    assert await db.fetchval("SELECT recording_id::text FROM stream_sessions") == video_id
    assert await finish_orphans(pool, storage, 3) == 0  # once
