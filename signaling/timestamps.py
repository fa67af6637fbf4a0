"""Timestamps in the API's answers: ISO 8601 with the offset Postgres gives a
timestamptz, or null where the row has none. One format for every route."""

from __future__ import annotations

from datetime import datetime


def iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
