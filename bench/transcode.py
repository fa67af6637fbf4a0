"""Transcoding speed per rendition (× real time) and the recorder's CPU per
live stream, on this machine.

1. A synthetic source (moving gradient + tone, H.264/AAC, made with PyAV) is
   transcoded by the media role's own code (media/transcode.py) to each rung of
   the ladder alone, then to the whole ladder at once (decoded once, as the
   media role does): media seconds / wall seconds, and CPU seconds.
2. The recorder (sfu/recorder.py) is fed the encoded frames of a VP8/Opus
   source through its taps, as a Fanout does, as fast as it takes them: CPU per
   second of media is the share of a core one recorded live stream costs
   (independent of the number of viewers: one tap per track).

Fast form (the default): a 6 s 720p source, a 20 s 640x480 recording."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_description, markdown_table, update_doc_section, utc_now
from media.probe import probe
from media.transcode import ladder_for, transcode
from sfu.recorder import Recording
from tests.media_samples import make_clip
from tests.recorder_feeder import encoded_frames, recording_taps

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(action) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), cpu_seconds()
    action()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def bench_transcode(work: Path, seconds: int, width: int, height: int) -> list[list[str]]:
    source = make_clip(work / "source.mp4", seconds=seconds, width=width, height=height)
    info = probe(source)
    rows = []
    for rung in ladder_for(info.width, info.height):
        wall, cpu = timed(lambda r=rung: transcode(source, work / f"one-{r.name}", info,
                                                   rungs=[r]))
        rows.append([rung.name, f"{rung.width}x{rung.height}", f"{info.duration / wall:.2f}×",
                     f"{cpu:.1f} s"])
    wall, cpu = timed(lambda: transcode(source, work / "ladder", info))
    names = "+".join(r.name for r in ladder_for(info.width, info.height))
    rows.append([f"ladder ({names})", "all", f"{info.duration / wall:.2f}×", f"{cpu:.1f} s"])
    return rows


def bench_recorder(work: Path, seconds: int, video: str = "libvpx") -> tuple[float, int]:
    """VP8 frames from a WebM into WebM, or H.264 Annex B frames (what aiortc's
    depacketizer hands the taps, from an MPEG-TS) into Matroska."""
    form = "webm" if video == "libvpx" else "mpegts"
    source = make_clip(work / f"live.{form}", container=form, video=video, audio="libopus",
                       seconds=seconds, width=640, height=480)
    frames = list(encoded_frames(source))  # demuxed before the clock starts
    recording = Recording("bench", "bench", "bench", work / f"recording-{video}")
    taps = recording_taps(recording)

    def run() -> None:
        recording.start()
        for frame in frames:
            frame.feed(taps)
        recording.close()

    _, cpu = timed(run)
    return cpu / seconds, recording.frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=6, help="source length (s)")
    parser.add_argument("--height", type=int, default=720, help="source height")
    parser.add_argument("--record-seconds", type=int, default=20)
    parser.add_argument("--write-doc", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    width = args.height * 16 // 9 // 2 * 2
    load = os.getloadavg()[0]  # the machine is shared: speeds fall with its load
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_transcode(Path(tmp), args.seconds, width, args.height)
        recorder_cpu, frames = bench_recorder(Path(tmp), args.record_seconds)
        h264_cpu, h264_frames = bench_recorder(Path(tmp), args.record_seconds, "libx264")
    command = "python bench/transcode.py" + (
        "" if (args.seconds, args.height, args.record_seconds) == (6, 720, 20) else
        f" --seconds {args.seconds} --height {args.height} "
        f"--record-seconds {args.record_seconds}")
    body = f"""## Transcoding and recording (`bench/transcode.py`)

- command: `.venv/bin/python {command.removeprefix('python ')} --write-doc`
- machine: {machine_description()}; date: {utc_now()} (machine shared with other work:
  load average {load:.1f} at the start)
- what: a {args.seconds} s {width}x{args.height} 30 fps H.264/AAC source transcoded by
  `media/transcode.py` (libx264 `veryfast`, AAC 128 kb/s, 2 s segments) to each rung alone, then
  to the whole ladder in one pass (one decode, as the media role runs it). Speed is media seconds
  per wall second; CPU is user + system of the process (x264 uses several threads).

{markdown_table(["rendition", "size", "speed (× real time)", "CPU"], rows)}

Recorder: {args.record_seconds} s of 640x480 VP8 + Opus frames ({frames} frames) fed through the
recorder's taps and muxed into WebM by its writer thread cost **{recorder_cpu * 100:.2f}% of a
core per live stream** (CPU seconds per media second); the same of H.264 + Opus
({h264_frames} frames) into Matroska **{h264_cpu * 100:.2f}%** (its one extra cost: decoding the
first keyframe for its size). Whatever the number of viewers: the tap sees each frame once per
track, not once per viewer.
"""
    print(body)
    if args.write_doc:
        update_doc_section(DOC, "transcode", body)


if __name__ == "__main__":
    main()
