"""The community side of one websocket (docs/protocol.md, "Chat and
alerts"): who is signed in on it (so presence can alert or disconnect them)
and which stream's chat it sits in. ws.Connection owns one and hands it the
`auth` / `chat_join` / `chat_leave` / `chat` messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from signaling import protocol
from signaling.admission import ensure_not_suspended, verify_viewer_token
from signaling.community.chat import chat_history, send_chat
from signaling.community.chat_events import CHAT_DELETED, CHAT_EVENTS, CHAT_MESSAGE, CHAT_TIP
from signaling.community.presence import PRESENCE
from signaling.events import EVENTS, stream_channel
from signaling.protocol import (
    Auth,
    ChatJoin,
    ChatLeave,
    ChatSend,
    CommunityMessage,
    ErrorCode,
    Message,
    ProtocolError,
)
from signaling.state import SETTINGS
from vilokanam.backends import BACKENDS


class WsMember:
    def __init__(self, app: web.Application, send: Callable[[Message], None],
                 on_suspended: Callable[[], None]) -> None:
        self._app = app
        self._send = send
        self._on_suspended = on_suspended
        self.user_id: str | None = None
        self.chat_stream: str | None = None
        # While joining: live messages wait here until the history is sent.
        self._joining: list[dict[str, Any]] | None = None

    # --- presence.Member ----------------------------------------------------------

    def send(self, message: Message) -> None:
        self._send(message)

    def on_suspended(self) -> None:
        self._on_suspended()

    def identify(self, user_id: str) -> None:
        """The connection's user (from `auth`, a `watch` token, or the creator
        of the stream it publishes); alerts and suspensions reach it."""
        if self.user_id == user_id:
            return
        presence = self._app[PRESENCE]
        if self.user_id is not None:
            presence.leave(self.user_id, self)
        self.user_id = user_id
        presence.join(user_id, self)

    # --- messages -------------------------------------------------------------------

    async def handle(self, message: CommunityMessage) -> None:
        match message:
            case Auth(token=token):
                claims = verify_viewer_token(self._app[SETTINGS], token)
                await ensure_not_suspended(self._app[BACKENDS], claims.user_id)
                self.identify(claims.user_id)
                self.send(protocol.authenticated(claims.user_id, claims.account))
            case ChatJoin(stream_id=stream_id):
                await self._join(stream_id)
            case ChatLeave():
                left = self._leave_chat()
                self.send(protocol.chat_left(left))
            case ChatSend() as chat:
                if self.user_id is None:
                    raise ProtocolError(ErrorCode.UNAUTHORIZED,
                                        "sign in to chat: send auth (or watch) first")
                sent = await send_chat(self._app, self.user_id, chat.stream_id, chat.content,
                                       chat.parent_id, front="ws")
                self.send(protocol.chat_sent(chat.ref, sent))

    async def _join(self, stream_id: str) -> None:
        """Listen first, then read the history, so no message falls between
        the two; one that is in both is sent once (in the history)."""
        self._leave_chat()
        self.chat_stream, self._joining = stream_id, []
        self._app[EVENTS].add(stream_channel(stream_id), self)
        try:
            history = await chat_history(self._app, stream_id)
        except BaseException:
            self._leave_chat()
            raise
        held, self._joining = self._joining, None
        self.send(protocol.chat_history(stream_id, history))
        seen = {m["id"] for m in history}
        for event in held:
            if event.get("type") != CHAT_MESSAGE or event["message"].get("id") not in seen:
                self.relay(event)

    def _leave_chat(self) -> str | None:
        stream_id, self.chat_stream, self._joining = self.chat_stream, None, None
        if stream_id is not None:
            self._app[EVENTS].remove(stream_channel(stream_id), self)
        return stream_id

    # --- EventHub listener: the chat's events ---------------------------------------------

    def on_event(self, channel: str, event: dict[str, Any]) -> None:
        if event.get("type") not in CHAT_EVENTS or \
                event.get("stream_id") != self.chat_stream:
            return
        if self._joining is not None:
            self._joining.append(event)
        else:
            self.relay(event)

    def relay(self, event: dict[str, Any]) -> None:
        stream_id = str(event["stream_id"])
        if event["type"] == CHAT_MESSAGE and isinstance(event.get("message"), dict):
            self.send(protocol.chat_message(stream_id, event["message"]))
        elif event["type"] == CHAT_DELETED and isinstance(event.get("id"), str):
            self.send(protocol.chat_deleted(stream_id, event["id"]))
        elif event["type"] == CHAT_TIP and isinstance(event.get("tip"), dict):
            self.send(protocol.chat_tip(stream_id, event["tip"]))

    def close(self) -> None:
        self._leave_chat()
        if self.user_id is not None:
            self._app[PRESENCE].leave(self.user_id, self)
