"""The websocket protocol, version 1 (docs/protocol.md): the messages a client
may send, parsed into one dataclass per type; the messages the server sends;
the error codes. Pure functions: no I/O here."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PROTOCOL_VERSION = 1
# Largest message we read. An SDP offer is a few KiB; 64 KiB leaves room for
# many tracks while keeping a client from making us parse megabytes.
MAX_MESSAGE_BYTES = 64 * 1024
# aiohttp's own frame limit, set well above ours so an oversized message is an
# error reply and the connection survives; above this aiohttp closes it (1009).
MAX_FRAME_BYTES = 1024 * 1024


class ErrorCode(StrEnum):
    # the message itself
    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    BAD_REQUEST = "bad_request"
    MESSAGE_TOO_LARGE = "message_too_large"
    WRONG_STATE = "wrong_state"
    # credentials and the stream
    STREAM_NOT_FOUND = "stream_not_found"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    STREAM_NOT_LIVE = "stream_not_live"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    SUSPENDED = "suspended"
    # viewer-signed delivery receipts (signaling/delivery_receipts.py)
    RECEIPTS_REQUIRED = "receipts_required"
    DELEGATION_REFUSED = "delegation_refused"
    RECEIPT_REFUSED = "receipt_refused"
    RECEIPTS_STOPPED = "receipts_stopped"
    # placement and the SFU worker
    NO_CAPACITY = "no_capacity"
    ALREADY_LIVE = "already_live"
    BAD_SDP = "bad_sdp"
    NO_SUPPORTED_CODEC = "no_supported_codec"
    TOO_MANY_TRACKS = "too_many_tracks"
    BAD_CANDIDATE = "bad_candidate"
    SFU_UNAVAILABLE = "sfu_unavailable"
    # a session the worker ended (the peer_closed reasons)
    CONNECTION_FAILED = "connection_failed"
    WORKER_DRAINING = "worker_draining"
    PEER_CLOSED = "peer_closed"  # any other reason; the message names it
    INTERNAL_ERROR = "internal_error"


class ProtocolError(Exception):
    """Becomes `{"type": "error", "code", "message"}`; the connection stays open."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class State(StrEnum):
    IDLE = "idle"
    PUBLISHING = "publishing"
    WATCHING = "watching"


# --- client -> server ---------------------------------------------------------

@dataclass(frozen=True)
class Publish:
    stream_id: str
    stream_key: str
    sdp: str


@dataclass(frozen=True)
class Watch:
    stream_id: str
    token: str
    sdp: str
    delegation: Any = None  # the raw `delegation` object, checked by delivery_receipts


@dataclass(frozen=True)
class IceCandidate:
    candidate: str  # "" = end of candidates
    sdp_mid: str | None
    sdp_mline_index: int | None

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "sdpMid": self.sdp_mid,
                "sdpMLineIndex": self.sdp_mline_index}


@dataclass(frozen=True)
class Candidate:
    candidate: IceCandidate | None  # None = end of candidates


@dataclass(frozen=True)
class Leave:
    pass


@dataclass(frozen=True)
class ReceiptMessage:
    data: dict[str, Any]  # checked by delivery_receipts.parse_receipt


@dataclass(frozen=True)
class Auth:
    """Sign the connection in (chat, follow alerts) without watching."""

    token: str


@dataclass(frozen=True)
class ChatJoin:
    stream_id: str


@dataclass(frozen=True)
class ChatLeave:
    pass


@dataclass(frozen=True)
class ChatSend:
    stream_id: str
    content: Any  # checked by the chat itself, as for REST (400-style codes)
    parent_id: Any
    ref: str | None  # echoed in chat_sent, so a client can match its message


ClientMessage = (Publish | Watch | Candidate | Leave | Auth | ChatJoin | ChatLeave | ChatSend
                 | ReceiptMessage)
CommunityMessage = Auth | ChatJoin | ChatLeave | ChatSend


def parse_message(text: str) -> ClientMessage:
    """One client text frame → its message. Raises ProtocolError."""
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and bad UTF-16 surrogates
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "a message is a JSON object with a type")
    match data.get("type"):
        case "publish":
            return Publish(_stream_id(data), _text(data, "stream_key"), _text(data, "sdp"))
        case "watch":
            return Watch(_stream_id(data), _text(data, "token"), _text(data, "sdp"),
                         data.get("delegation"))
        case "receipt":
            return ReceiptMessage(data)
        case "candidate":
            return Candidate(_candidate(data))
        case "leave":
            return Leave()
        case "auth":
            return Auth(_text(data, "token"))
        case "chat_join":
            return ChatJoin(_stream_id(data))
        case "chat_leave":
            return ChatLeave()
        case "chat":
            ref = data.get("ref")
            if ref is not None and (not isinstance(ref, str) or len(ref) > 64):
                raise _bad("ref", "must be a string of at most 64 characters")
            return ChatSend(_stream_id(data), data.get("content"), data.get("parent_id"), ref)
        case other:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {other!r}")


def _bad(field: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"{field}: {what}")


def _text(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise _bad(field, "required, a non-empty string")
    return value


def _stream_id(data: dict[str, Any]) -> str:
    raw = _text(data, "stream_id")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise _bad("stream_id", "must be a UUID") from None


def _candidate(data: dict[str, Any]) -> IceCandidate | None:
    if "candidate" not in data:
        raise _bad("candidate", "required: an RTCIceCandidateInit object, or null")
    value = data["candidate"]
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("candidate", "must be an object or null")
    text, mid, index = value.get("candidate"), value.get("sdpMid"), value.get("sdpMLineIndex")
    if not isinstance(text, str):
        raise _bad("candidate.candidate", "required, a string ('' = end of candidates)")
    if mid is not None and not isinstance(mid, str):
        raise _bad("candidate.sdpMid", "must be a string or null")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                              or index < 0):
        raise _bad("candidate.sdpMLineIndex", "must be a non-negative integer or null")
    return IceCandidate(text, mid, index)


# --- server -> client ---------------------------------------------------------

Message = dict[str, Any]


def hello() -> Message:
    return {"type": "hello", "version": PROTOCOL_VERSION}


def publish_answer(sdp: str, session_id: str, resumed: bool) -> Message:
    return {"type": "answer", "sdp": sdp, "session_id": session_id, "resumed": resumed}


def watch_answer(sdp: str, viewer_session_id: str) -> Message:
    # session_id is in every answer (the session this answer opened), so a
    # client can read one field whatever it asked for.
    return {"type": "answer", "sdp": sdp, "session_id": viewer_session_id,
            "viewer_session_id": viewer_session_id}


def viewer_count(count: int) -> Message:
    return {"type": "viewer_count", "count": count}


def tick(seconds: int, cost: str) -> Message:
    """A viewer's metering so far: seconds billed, their cost in tokens."""
    return {"type": "tick", "seconds": seconds, "cost": cost}


def receipt_accepted(viewer_session_id: str, seconds: int) -> Message:
    return {"type": "receipt_accepted", "viewer_session_id": viewer_session_id,
            "seconds": seconds}


def stream_started() -> Message:
    return {"type": "stream_started"}


def stream_ended() -> Message:
    return {"type": "stream_ended"}


def left() -> Message:
    return {"type": "left"}


def error(code: ErrorCode, message: str) -> Message:
    return {"type": "error", "code": code.value, "message": message}


def refusal(code: str, message: str, retry_after: str | None = None) -> Message:
    """An `error` for a refusal the REST API shares (chat: `invalid_content`,
    `chat_rate_limited` with `retry_after` seconds, `chat_closed`, ...)."""
    body: Message = {"type": "error", "code": code, "message": message}
    if retry_after is not None:
        body["retry_after"] = int(retry_after)
    return body


def authenticated(user_id: str, account: str) -> Message:
    return {"type": "authenticated", "user_id": user_id, "account": account}


def chat_history(stream_id: str, messages: list[Message]) -> Message:
    return {"type": "chat_history", "stream_id": stream_id, "messages": messages}


def chat_left(stream_id: str | None) -> Message:
    return {"type": "chat_left", "stream_id": stream_id}


def chat_sent(ref: str | None, message: Message) -> Message:
    return {"type": "chat_sent", "ref": ref, "message": message}


def chat_message(stream_id: str, message: Message) -> Message:
    return {"type": "chat_message", "stream_id": stream_id, "message": message}


def chat_deleted(stream_id: str, comment_id: str) -> Message:
    return {"type": "chat_deleted", "stream_id": stream_id, "id": comment_id}


def chat_tip(stream_id: str, tip: Message) -> Message:
    return {"type": "chat_tip", "stream_id": stream_id, "tip": tip}


# The peer_closed reasons a client sees as an error code of the same name.
_REASON_CODES = {ErrorCode.CONNECTION_FAILED, ErrorCode.WORKER_DRAINING,
                 ErrorCode.INSUFFICIENT_FUNDS}


def peer_closed(reason: str) -> Message:
    """What a client is told when the worker closed its peer connection."""
    if reason == "stream_ended":
        return stream_ended()
    code = next((c for c in _REASON_CODES if c.value == reason), ErrorCode.PEER_CLOSED)
    return error(code, f"the media connection was closed: {reason}")
