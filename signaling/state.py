"""Typed keys for what the signaling app owns (aiohttp AppKeys): handlers read
their dependencies from the app, never from module globals."""

from __future__ import annotations

from aiohttp import web

from vilokanam.config import Settings

SETTINGS = web.AppKey("settings", Settings)
