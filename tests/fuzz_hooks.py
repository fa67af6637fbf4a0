"""schemathesis hooks for tests/test_fuzz_api.py, loaded in its schemathesis
process (the run's schemathesis.toml names this module).

The document's own formats get generators here: `ss58` (real addresses, in
several prefixes, most of them nobody's), `sdp-offer` (real offers aiortc made,
their path in VILOKANAM_FUZZ_OFFERS) and `sdpfrag` (trickle ICE lines); and the
non-JSON bodies (SDP, trickle fragments, video files) are sent as bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import strategies as st
from scalecodec.utils.ss58 import ss58_encode
from schemathesis.transport.serialization import serialize_binary

# //Bob (generic prefix), the creator the test made. Never the caller, //Alice:
# following, tipping or subscribing to oneself is refused by a rule no schema
# can say (400 `cannot_follow_self`; tests/test_community_api.py and
# tests/test_creator_support.py check it).
KNOWN = ["5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"]

_accounts = st.one_of(
    st.sampled_from(KNOWN),
    st.tuples(st.binary(min_size=32, max_size=32), st.sampled_from([0, 2, 42])).map(
        lambda key_prefix: str(ss58_encode(key_prefix[0], ss58_format=key_prefix[1]))))
schemathesis.openapi.format("ss58", _accounts)

# What the test made for this run: real offers, and the categories that exist.
_made_file = os.environ.get("VILOKANAM_FUZZ_MADE")
_MADE: dict[str, list[str]] = (json.loads(Path(_made_file).read_text()) if _made_file
                               else {"offers": ["v=0\r\n"], "categories": ["Music"]})
schemathesis.openapi.format("sdp-offer", st.sampled_from(_MADE["offers"]))
# ids, and names in any case (names match without regard to case)
schemathesis.openapi.format("category", st.sampled_from(_MADE["categories"]).flatmap(
    lambda name: st.sampled_from([name, name.lower(), name.upper()])))

_candidate = st.builds(
    "a=candidate:{} 1 udp {} 127.0.0.1 {} typ host\r\n".format,
    st.integers(1, 2**32 - 1), st.integers(1, 2**31 - 1), st.integers(1, 65535))
_fragment = st.builds(
    lambda mid, lines, end: (f"a=mid:{mid}\r\n" if mid is not None else "") + "".join(lines)
    + ("a=end-of-candidates\r\n" if end else ""),
    st.sampled_from([None, "0", "1"]), st.lists(_candidate, min_size=1, max_size=3),
    st.booleans())
schemathesis.openapi.format("sdpfrag", _fragment)


@schemathesis.serializer("application/sdp", "application/trickle-ice-sdpfrag", "video/*",
                         "video/mp4")
def _raw_body(ctx: Any, value: Any) -> bytes:
    return serialize_binary(value)  # strings as UTF-8, generated files as their bytes
