"""schemathesis against the live OpenAPI document: the real signaling app (on the
test Postgres and Redis, with a real SFU worker behind it) is fuzzed from its
own `/api/openapi.json` through every phase (examples, coverage, fuzzing, and
stateful runs that follow the document's links), and every check must pass: no
5xx, every status, content type, header and body as documented, documented
limits enforced, valid input accepted. docs/reliability.md ("Fuzzing") has the
command and the last result.

CI runs a bounded form (VILOKANAM_FUZZ_EXAMPLES examples per operation, 8 by
default, and a time budget); set it higher for a long run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.api_client import ALICE_42, BOB_42, Client, create_stream, dev_settings, login, serve
from tests.conftest import REPO
from vilokanam.balances import credit
from vilokanam.config import Settings

EXAMPLES = int(os.environ.get("VILOKANAM_FUZZ_EXAMPLES", "5"))
# The stateful phase runs until its budget is spent (the other phases until
# EXAMPLES per operation): two runs, so neither starves the other.
STATEFUL_S = int(os.environ.get("VILOKANAM_FUZZ_STATEFUL_S", "30"))
# schemathesis' default answers to a request the document calls invalid
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]


@pytest.fixture
async def live(db: Any, redis: Any, settings: Settings,
               worker_on_settings_port: None) -> AsyncIterator[tuple[Client, Settings]]:
    fuzzed = dev_settings(settings)
    async with serve(fuzzed) as client:
        yield client, fuzzed


def config_toml(token: str, stream_key: str) -> str:
    """The run's schemathesis.toml: the hooks (formats, raw bodies), a viewer
    token on every request and the stream key on WHIP's (its Bearer is the
    key). /ws is left out: a websocket is no HTTP answer to check, and
    tests/test_fuzz_ws.py fuzzes its protocol."""
    return "\n".join([
        'hooks = "tests.fuzz_hooks"', "",
        "[headers]", f'Authorization = "Bearer {token}"', "",
        # RFC 6585: a PATCH without its required If-Match is 428
        "[checks.missing_required_header]",
        'expected-statuses = ["400", "401", "403", "406", "415", "422", "428"]', "",
        "[[operations]]", 'include-path-regex = "^/whip/"',
        f'headers = {{ Authorization = "Bearer {stream_key}" }}', "",
        # 402: the balance, not the request, cannot pay (a tip of 10^20 is valid)
        "[checks.positive_data_acceptance]",
        'expected-statuses = ["2xx", "3xx", "401", "402", "403", "404", "409", "429", "5xx"]',
        "",
        "[[operations]]", 'include-path = "/ws"', "enabled = false", "",
        # A video has a thumbnail once processed (there is no media role here), so
        # a video just made has none yet: 404 `thumbnail_not_found`, as documented.
        "[[operations]]", 'include-path = "/api/videos/{video_id}/thumbnail.jpg"',
        "[operations.checks.ensure_resource_availability]", "enabled = false", "",
        # tus 1.0: another Tus-Resumable is 412 Precondition Failed
        "[[operations]]", 'include-path-regex = "/upload$"',
        "[operations.checks.negative_data_rejection]",
        f"expected-statuses = {json.dumps(REJECTED + ['412'])}", ""])


async def offers() -> list[str]:
    """Real SDP offers (aiortc, as a browser would send): publishing and
    watching, with and without audio."""
    from tests.media_clients import client_pc

    made = []
    for direction, kinds in (("sendonly", ("video", "audio")), ("sendonly", ("video",)),
                             ("recvonly", ("video", "audio")), ("recvonly", ("audio",))):
        pc = client_pc()
        for kind in kinds:
            pc.addTransceiver(kind, direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        made.append(str(pc.localDescription.sdp))
        await pc.close()
    return made


async def run_schemathesis(base_url: str, config: Path, phases: str,
                           max_time_s: int | None = None) -> tuple[int, str]:
    """The schemathesis CLI as a child process (its requests are synchronous,
    so it cannot share the server's loop); returns its exit code and output."""
    args = [
        sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config),
        "run", f"{base_url}/api/openapi.json", "--checks", "all", "--phases", phases,
        "--max-examples", str(EXAMPLES), "--workers", "1",
        "--seed", os.environ.get("VILOKANAM_FUZZ_SEED", "16"), "--request-timeout", "20",
        *(["--max-time", str(max_time_s)] if max_time_s else [])]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        # in the test's folder: schemathesis keeps a cache (.schemathesis/) where it runs
        cwd=config.parent,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO),
             "VILOKANAM_FUZZ_MADE": str(config.parent / "made.json")})
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_the_api_agrees_with_its_document_under_schemathesis(
        live: tuple[Client, Settings], db: Any, redis: Any, tmp_path: Path) -> None:
    client, _ = live
    viewer = await login(client, ALICE_42)
    await credit(db, redis, viewer["user_id"], Decimal(1000), "adjustment", "fuzz", 12)
    creator = await login(client, BOB_42)
    stream = await create_stream(client, creator["token"])
    config = tmp_path / "schemathesis.toml"
    config.write_text(config_toml(viewer["token"], stream["stream_key"]))
    categories = [name for row in await db.fetch(
        "INSERT INTO categories (name) VALUES ('Music'), ('Just Chatting') "
        "RETURNING id::text, name") for name in (row["id"], row["name"])]
    (tmp_path / "made.json").write_text(json.dumps(
        {"offers": await offers(), "categories": categories}))
    out = Path(os.environ.get("VILOKANAM_FUZZ_OUT", tmp_path))
    base_url = str(client.make_url("")).rstrip("/")
    for name, phases, budget in (("generated", "examples,coverage,fuzzing", None),
                                 ("stateful", "stateful", STATEFUL_S)):
        code, output = await run_schemathesis(base_url, config, phases, budget)
        (out / f"schemathesis-{name}.txt").write_text(output)
        print(output[-3000:])
        assert code == 0, output[-20000:]
        # it ran: every phase asked for tested something, and nothing failed
        assert not re.search("❌|🚫", output), output[-20000:]
        passed = [int(n) for n in re.findall(r"✅ (\d+) passed", output)]
        assert passed and min(passed) >= 1, output[-5000:]
        if name == "generated":
            assert max(passed) >= 80, output  # (nearly) all 87 operations
        else:
            assert re.search(r"Scenarios:\s+[1-9]", output), output
