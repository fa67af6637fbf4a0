"""An S3-compatible server for tests: moto's server mode (PyPI `moto[server]`),
a STAND-IN for a real S3 / MinIO, which cannot run here. It speaks the S3 REST
API over HTTP on 127.0.0.1 (multipart uploads, part copies, ranges, listing),
so the storage code runs against it unchanged; tests/test_storage.py runs the
same storage tests against it and the directory."""

from __future__ import annotations

import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until_sync
from vilokanam.services.net import free_port
from vilokanam.services.process import ManagedProcess
from vilokanam.storage import S3Config

ACCESS_KEY, SECRET_KEY = "stand-in-access", "stand-in-secret-key"


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = ManagedProcess("moto-s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(port)],
                          log_path=Path(tmp_path_factory.mktemp("s3")) / "moto.log",
                          env={"PATH": "/usr/bin:/bin"})
    proc.start()
    url = f"http://127.0.0.1:{port}"
    def answering() -> bool:
        assert proc.running, f"the S3 stand-in exited:\n{proc.tail()}"
        return _up(f"{url}/moto-api/")

    try:
        wait_until_sync(answering, "the S3 stand-in answering", timeout=30)
        yield url
    finally:
        proc.stop()


async def new_bucket(endpoint: str) -> S3Config:
    """A fresh bucket (one per test: no test sees another's objects)."""
    from aiobotocore.session import get_session

    config = S3Config(endpoint, f"vk-{uuid.uuid4().hex[:12]}", "us-east-1", ACCESS_KEY,
                      SECRET_KEY)
    async with get_session().create_client(
            "s3", endpoint_url=endpoint, region_name=config.region,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY) as s3:
        await s3.create_bucket(Bucket=config.bucket)
    return config
