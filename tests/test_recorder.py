"""The recorder (sfu/recorder.py): frames muxed as they are into WebM (VP8) or
Matroska (H.264), a file cut by kill -9 still playable up to the crash, audio
and video aligned by the publisher's sender reports, recordings that become
videos (or fail with a reason), opt-out, and recordings of dead workers
finished by the media role's sweep (vilokanam/recordings.py). Real Postgres,
real files, and a real aiortc publisher sending H.264 to a worker."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import asyncpg
import av
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from media.probe import probe
from sfu.recorder import Recording, Recordings, Timeline, annexb_units, h264_parameters, vp8_size
from sfu.relay import Fanout
from signaling.stream_keys import hash_stream_key, new_stream_key
from tests.api_client import ALICE_42
from tests.conftest import REPO
from tests.media_clients import Publisher
from tests.media_samples import make_clip, webm
from tests.recorder_feeder import CODECS, encoded_frames, recording_taps
from tests.sfu_in_process import Worker, make_stream
from tests.waiting import wait_until
from vilokanam.config import Settings
from vilokanam.recordings import ORPHAN_AFTER_S, finish_orphans
from vilokanam.storage import storage_for


def test_vp8_keyframe_size() -> None:
    header = bytes([0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a]) + (640).to_bytes(2, "little") + \
        (480).to_bytes(2, "little")
    assert vp8_size(header) == (640, 480)
    assert vp8_size(bytes([0x51]) + header[1:]) is None  # an interframe
    assert vp8_size(b"\x00" * 4) is None


def h264_ts(path: Path, seconds: float = 2) -> Path:
    """H.264 in Annex B (what aiortc's depacketizer hands the taps) with Opus."""
    return make_clip(path, container="mpegts", video="libx264", audio="libopus",
                     seconds=seconds, width=160, height=120)


def test_h264_parameter_sets_and_size_from_a_keyframe(tmp_path: Path) -> None:
    with av.open(str(h264_ts(tmp_path / "a.ts", seconds=1))) as container:
        frames = [bytes(p) for p in container.demux(video=0) if p.size]
    parameters = h264_parameters(frames[0])
    assert parameters is not None
    extradata, size = parameters
    assert size == (160, 120)
    assert [u[0] & 0x1F for u in annexb_units(extradata)] == [7, 8]
    assert h264_parameters(frames[1]) is None  # an interframe carries no SPS/PPS
    idr_only = b"".join(b"\x00\x00\x00\x01" + u for u in annexb_units(frames[0])
                        if u[0] & 0x1F not in (7, 8))
    assert h264_parameters(idr_only) is None


def test_the_timeline_keeps_the_offset_the_sender_reports_give() -> None:
    ntp = (3_900_000_000 << 32) | (1 << 31)  # x.5 s on the publisher's NTP clock
    timeline = Timeline(("video", "audio"))
    video_first, audio_first = 2**32 - 900, 1234  # random starts; video wraps soon
    # Both first frames arrive at the same instant...
    timeline.frame("video", 90000, video_first, 100.0)
    timeline.frame("audio", 48000, audio_first, 100.0)
    assert not timeline.ready(100.5)  # no reports yet: held
    # ...but the publisher's reports say audio was captured 0.7 s after video.
    timeline.sender_report("video", ntp, video_first + 90000)  # video + 1 s at ntp
    timeline.sender_report("audio", ntp + int(0.7 * 2**32), audio_first + 48000)
    assert timeline.ready(100.6)
    timeline.place()
    assert timeline.aligned_by == "sender_reports"
    assert timeline.ms("video", 0) == 0
    assert timeline.ms("audio", 0) == 700
    later = timeline.frame("video", 90000, (video_first + 9000) % 2**32, 100.1)  # past the wrap
    assert later == 9000 and timeline.ms("video", later) == 100

    # Reports that contradict the arrival by hours are not believed.
    timeline = Timeline(("video", "audio"))
    timeline.frame("video", 90000, 5, 10.0)
    timeline.frame("audio", 48000, 7, 10.02)
    timeline.sender_report("video", ntp, 5)
    timeline.sender_report("audio", ntp + (20000 << 32), 7)
    timeline.place()
    assert timeline.aligned_by == "arrival" and timeline.disagreement is not None
    assert (timeline.ms("video", 0), timeline.ms("audio", 0)) == (0, 20)

    # Without a report for every track, arrival places them (after the hold).
    timeline = Timeline(("video", "audio"))
    timeline.frame("video", 90000, 5, 10.0)
    timeline.sender_report("video", ntp, 5)
    timeline.frame("audio", 48000, 7, 10.25)
    assert not timeline.ready(13.0) and timeline.ready(14.0)
    timeline.place()
    assert timeline.aligned_by == "arrival"
    assert (timeline.ms("video", 0), timeline.ms("audio", 0)) == (0, 250)


def _first_pts(path: Path) -> dict[str, float]:
    first: dict[str, float] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None and packet.size:
                first.setdefault(packet.stream.type, float(packet.pts * packet.time_base))
    return first


@pytest.mark.parametrize("reports", [True, False])
def test_a_recording_keeps_the_publishers_audio_offset(tmp_path: Path, reports: bool) -> None:
    """A publisher whose audio starts 0.6 s after its video (by its sender
    reports), both tracks' frames arriving at once: the file keeps the 0.6 s.
    Without reports the recorder can only align by arrival (0 s)."""
    source = webm(tmp_path / "live.webm", seconds=2, width=160, height=120)
    target = tmp_path / "recording.webm"
    recording = Recording("v", "s", "sess", target)
    taps = recording_taps(recording)
    starts = {"video": 3_000_000_000, "audio": 77}  # unrelated random RTP starts
    offsets = {"video": 0.0, "audio": 0.6}  # audio's t=0, on the publisher's clock
    recording.start()
    if reports:
        for kind in CODECS:
            wall = 3_900_000_000 + 10 + offsets[kind]
            recording.clock_tap_for(kind)(int(wall * 2**32), starts[kind])
    for frame in encoded_frames(source):
        frame.feed(taps, starts[frame.kind])
    recording.close()
    assert recording.error is None
    assert recording.timeline.aligned_by == ("sender_reports" if reports else "arrival")
    first = _first_pts(target)
    offset = first["audio"] - first["video"]
    assert abs(offset - (0.6 if reports else 0.0)) <= 0.03, first


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_recording_killed_mid_stream_is_playable_up_to_the_crash(tmp_path: Path,
                                                                    codec: str) -> None:
    if codec == "h264":
        source = h264_ts(tmp_path / "live.ts", seconds=8)
    else:
        source = webm(tmp_path / "live.webm", seconds=8, width=160, height=120)
    target = tmp_path / "recording"
    feeder = subprocess.Popen([sys.executable, "-m", "tests.recorder_feeder", str(source),
                               str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert feeder.stdout is not None
    try:
        # Until 6 s of media went through the taps: the feeder sends no sender
        # reports, so the writer holds the first ALIGN_HOLD_S (4 s) before writing.
        for line in feeder.stdout:
            if line.startswith("fed video") and float(line.split()[2]) >= 6.0:
                break
        time.sleep(0.3)  # let the writer thread take what was fed (it flushes per frame)
    finally:
        feeder.kill()  # SIGKILL: no close(), no trailer
        feeder.wait()
    assert feeder.returncode == -9
    info = probe(target)  # a valid file...
    assert (info.format, info.codec, info.audio_codec) == (
        {"vp8": "webm", "h264": "mkv"}[codec], codec, "opus")
    assert (info.width, info.height) == (160, 120)
    assert 4.5 <= info.duration <= 7.5, info.duration  # ...up to about the crash
    with av.open(str(target)) as container:  # and every frame decodes
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 120


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
    taps = {kind: fanout.taps[0] for kind, fanout in fanouts.items()}
    for frame in encoded_frames(source):
        frame.feed(taps)
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

    # A codec the recorder does not take (AV1): the video says so.
    stream4, session4 = await _stream(db, creator=False)
    fanouts = _fanouts()
    await recordings.start(stream4, session4, fanouts)
    av1 = RTCRtpCodecParameters(mimeType="video/AV1", clockRate=90000, payloadType=45)
    fanouts["video"].taps[0](av1, b"\x12\x00\x0a" + b"\x00" * 50, 0, True)
    await recordings.finish(stream4, fanouts)
    reason = await db.fetchval("SELECT failure_reason FROM videos WHERE source_stream_id = "
                               "$1::uuid", stream4)
    assert "video/AV1 is not recorded" in reason

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


async def test_an_h264_publisher_is_recorded_aligned_by_its_sender_reports(
        worker: Worker, db: asyncpg.Connection, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    """A real aiortc publisher sending H.264 through a worker: the recording is
    Matroska holding the H.264 frames as sent (no re-encode) with the Opus
    audio, placed by the publisher's RTCP sender reports."""
    caplog.set_level(logging.INFO, logger="sfu.recorder")
    stream_id, _ = await make_stream(db)
    publisher = Publisher()
    answer = await publisher.start(worker.signal_publisher(stream_id), video_codec="video/H264")
    assert "H264/90000" in answer

    async def recorded() -> int | None:
        active = worker.manager.recordings.active if worker.manager.recordings else {}
        entry = active.get(stream_id)
        return entry[0].video_frames if entry and entry[0].video_frames >= 60 else None

    await wait_until(recorded, "60 recorded H.264 frames", timeout=30)
    assert await worker.post(f"/control/streams/{stream_id}/end", {}) == (200, {"ended": True})
    await publisher.close()
    video = await db.fetchrow("SELECT id::text, status, storage_key FROM videos "
                              "WHERE source_stream_id = $1::uuid", stream_id)
    assert video["status"] == "processing"
    info = probe(settings.media_dir / video["storage_key"])
    assert (info.format, info.codec, info.audio_codec) == ("mkv", "h264", "opus")
    assert (info.width, info.height) == (320, 240) and info.duration >= 1.5
    finished = [r for r in caplog.records if r.getMessage() == "recording.finished"]
    fields = getattr(finished[-1], "fields", {})
    assert (fields["video_codec"], fields["aligned_by"]) == ("video/h264", "sender_reports")
    assert fields["report_disagreement_s"] < 0.5  # the reports agree with the arrivals
    assert fields["error"] is None
