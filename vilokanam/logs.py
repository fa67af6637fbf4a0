"""Structured logs: one line per event, `event key=value …` as text or one JSON
object per line (VILOKANAM_LOG_FORMAT=json).

Call `log_event(logger, "stream.started", stream_id=…, session_id=…)`. Secrets
(stream keys, tokens, seeds) are never passed to a log call; as a second line of
defence, every value registered with `register_secret` is masked in the output."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

_SECRETS: set[str] = set()
_MIN_SECRET_LEN = 6  # shorter strings would mask ordinary words


def register_secret(value: str | None) -> None:
    if value and len(value) >= _MIN_SECRET_LEN:
        _SECRETS.add(value)


def mask_secrets(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              **fields: Any) -> None:
    logger.log(level, event, extra={"fields": fields})


def ms_between(start: float, end: float) -> int:
    """Whole milliseconds between two `time.monotonic()` readings: the `ms`
    fields of the timed log lines (a join's steps, docs/benchmarks.md)."""
    return round((end - start) * 1000)


def ms_since(start: float) -> int:
    return ms_between(start, time.monotonic())


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        if self.as_json:
            line = json.dumps({"ts": stamp, "level": record.levelname.lower(),
                               "logger": record.name, "event": record.getMessage(), **fields},
                              default=str)
        else:
            pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
            line = f"{stamp} {record.levelname:<7} {record.name} {record.getMessage()} {pairs}"
        return mask_secrets(line.rstrip())


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would add an unstructured line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
