import json
import logging
from collections.abc import Iterator

import pytest

from vilokanam.logs import configure_logging, log_event, register_secret


@pytest.fixture
def logger(capsys: pytest.CaptureFixture[str]) -> Iterator[logging.Logger]:
    """configure_logging replaces the root handlers with one on this test's
    captured stderr: put the old ones back, or later tests log to a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield logging.getLogger("test.logs")
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_line_has_event_and_ids(logger: logging.Logger,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text")
    log_event(logger, "stream.started", stream_id="s-1", title="two words")
    line = capsys.readouterr().err.strip()
    assert "stream.started stream_id=s-1 title=\"two words\"" in line
    assert len(line.splitlines()) == 1


def test_json_line_is_one_object(logger: logging.Logger,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    log_event(logger, "viewer.joined", stream_id="s-1", viewer_id="v-9")
    record = json.loads(capsys.readouterr().err)
    assert record["event"] == "viewer.joined"
    assert record["stream_id"] == "s-1" and record["viewer_id"] == "v-9"
    configure_logging("text")


def test_registered_secrets_never_reach_the_output(logger: logging.Logger,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    register_secret("sk_live_very_secret")
    log_event(logger, "oops", detail="key was sk_live_very_secret")
    logger.warning("message with sk_live_very_secret inside")
    out = capsys.readouterr().err
    assert "sk_live_very_secret" not in out
    assert out.count("***") == 2
    configure_logging("text")
