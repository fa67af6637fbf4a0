"""media/cid.py against an independent implementation of `ipfs add
--cid-version=1`: npm `ipfs-car` (pinned in tests/ipfs_car/package-lock.json),
run with Node. Sizes cover one raw leaf, a one-level DAG, a chunk boundary and
a two-level DAG (more than 174 chunks)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from media.cid import CHUNK_SIZE, MAX_LINKS, cid_of_file, cid_of_files
from tests.conftest import REPO, npm_cache_dir, require
from vilokanam.services.chain import node_available

MANIFEST = REPO / "tests" / "ipfs_car"


@pytest.fixture(scope="module")
def ipfs_car() -> Path:
    require(node_available(), "Node >= 20 with npm (for ipfs-car)")
    target = npm_cache_dir().parent / "ipfs-car"
    lock = (MANIFEST / "package-lock.json").read_bytes()
    stamp = target / ".lock-sha256"
    if not stamp.exists() or stamp.read_text() != hashlib.sha256(lock).hexdigest():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(MANIFEST / name, target / name)
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                       cwd=target, check=True, capture_output=True, timeout=600)
        stamp.write_text(hashlib.sha256(lock).hexdigest())
    return target / "node_modules" / ".bin" / "ipfs-car"


def their_cid(tool: Path, path: Path, tmp_path: Path) -> str:
    done = subprocess.run([str(tool), "pack", str(path), "--no-wrap", "--output",
                           str(tmp_path / "out.car")], capture_output=True, text=True,
                          timeout=120, check=True, env={**os.environ, "NO_COLOR": "1"})
    return (done.stdout + done.stderr).strip().splitlines()[-1]


@pytest.mark.parametrize("size", [
    1, 1000, CHUNK_SIZE, CHUNK_SIZE + 1, 4 * CHUNK_SIZE + 17, (MAX_LINKS + 3) * CHUNK_SIZE])
def test_cid_matches_ipfs_car(ipfs_car: Path, tmp_path: Path, size: int) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(size))
    assert cid_of_file(path) == their_cid(ipfs_car, path, tmp_path)


def test_cid_of_segments_is_the_cid_of_their_concatenation(tmp_path: Path) -> None:
    parts = [tmp_path / f"{i}.ts" for i in range(3)]
    for i, part in enumerate(parts):
        part.write_bytes(os.urandom(CHUNK_SIZE // 3 + i))
    whole = tmp_path / "whole.ts"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    assert cid_of_files(parts) == cid_of_file(whole)
    assert cid_of_file(parts[0]) != cid_of_file(whole)
