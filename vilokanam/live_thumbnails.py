"""Where a live stream's thumbnail lives, shared by the SFU worker that makes
it (sfu/thumbnails.py) and the signaling server that serves it — neither
imports the other: they meet in storage and in `streams.thumbnail_url`."""

from __future__ import annotations

import uuid

from vilokanam.storage import check_key

THUMBNAIL_MAX_WIDTH = 640  # a card on the home page; larger frames are scaled down


def thumbnail_key(stream_id: str) -> str:
    """The storage key of the stream's latest thumbnail (a JPEG)."""
    return check_key(f"streams/{uuid.UUID(stream_id)}/thumb.jpg")


def thumbnail_path(stream_id: str) -> str:
    """The signaling route that serves it."""
    return f"/api/streams/{uuid.UUID(stream_id)}/thumbnail.jpg"
