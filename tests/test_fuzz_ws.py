"""Property tests of the websocket protocol's parser (hypothesis,
signaling/protocol.py): any text frame, any JSON, is one client message or a
ProtocolError carrying a documented error code (docs/protocol.md), never
another exception; and well-formed messages parse to what they say."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.protocol import (
    Candidate,
    ErrorCode,
    ProtocolError,
    Publish,
    Watch,
    parse_message,
)

FAST = settings(max_examples=100, deadline=None)
# The codes a malformed message may get (the rest come from later steps).
MESSAGE_CODES = {ErrorCode.BAD_JSON, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_REQUEST}
TYPES = ["publish", "watch", "receipt", "candidate", "leave", "auth", "chat_join",
         "chat_leave", "chat", "nope", "", None, 1]

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8)
# Objects shaped like messages: a type, and the protocol's field names with any values.
fields = st.sampled_from(["stream_id", "stream_key", "sdp", "token", "candidate", "content",
                          "parent_id", "ref", "delegation"])
message_like = st.builds(
    lambda kind, extra: {"type": kind, **extra}, st.sampled_from(TYPES),
    st.dictionaries(fields, st.one_of(json_value, st.uuids().map(str),
                                      st.fixed_dictionaries({"candidate": json_value},
                                                            optional={"sdpMid": json_value,
                                                                      "sdpMLineIndex":
                                                                          json_value})),
                    max_size=5))


def _parsed(text: str) -> object:
    try:
        return parse_message(text)
    except ProtocolError as exc:
        assert exc.code in MESSAGE_CODES and exc.message
        return exc


@FAST
@given(st.one_of(st.text(max_size=200), json_value.map(json.dumps),
                 message_like.map(json.dumps)))
def test_any_frame_is_a_message_or_a_documented_error(text: str) -> None:
    result = _parsed(text)
    if not isinstance(result, ProtocolError):
        data = json.loads(text)
        assert isinstance(data, dict) and data["type"] in TYPES


@FAST
@given(message_like)
def test_a_message_of_unknown_type_is_unknown_type(message: dict[str, Any]) -> None:
    result = _parsed(json.dumps(message))
    if message["type"] not in TYPES[:9]:
        assert isinstance(result, ProtocolError) and result.code is ErrorCode.UNKNOWN_TYPE


@FAST
@given(st.uuids(), st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=200),
       st.sampled_from(["publish", "watch"]))
def test_a_well_formed_offer_parses_to_what_it_says(stream: uuid.UUID, secret: str, sdp: str,
                                                   kind: str) -> None:
    field = "stream_key" if kind == "publish" else "token"
    parsed = parse_message(json.dumps({"type": kind, "stream_id": str(stream).upper(),
                                       field: secret, "sdp": sdp}))
    assert isinstance(parsed, Publish if kind == "publish" else Watch)
    assert parsed.stream_id == str(stream) and parsed.sdp == sdp
    assert (parsed.stream_key if isinstance(parsed, Publish) else parsed.token) == secret


@FAST
@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=5)),
       st.one_of(st.none(), st.integers(min_value=0, max_value=2**40)))
def test_a_candidate_keeps_its_fields(text: str, mid: str | None, index: int | None) -> None:
    parsed = parse_message(json.dumps({"type": "candidate", "candidate": {
        "candidate": text, "sdpMid": mid, "sdpMLineIndex": index}}))
    assert isinstance(parsed, Candidate) and parsed.candidate is not None
    assert parsed.candidate.to_json() == {"candidate": text, "sdpMid": mid,
                                          "sdpMLineIndex": index}
