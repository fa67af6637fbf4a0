"""The little SDP that WHIP/WHEP signaling reads: the ICE credentials of an
offer, and trickle-ICE fragments (`application/trickle-ice-sdpfrag`,
RFC 8840 section 4.4) as WHIP/WHEP clients PATCH them. Pure functions.

The media SDP itself is the worker's business; signaling only needs to know
which candidates to forward and whether a fragment restarts ICE (new
ice-ufrag/ice-pwd), which aiortc cannot do."""

from __future__ import annotations

import re
from dataclasses import dataclass

from signaling.protocol import IceCandidate

# An SDP line is `<one letter>=<value>`; anything else makes a fragment malformed.
_LINE = re.compile(r"^([a-z])=(.*)$")


class MalformedFragment(ValueError):
    pass


@dataclass(frozen=True)
class IceCredentials:
    ufrag: str | None
    pwd: str | None


@dataclass(frozen=True)
class TrickleFragment:
    credentials: IceCredentials
    candidates: tuple[IceCandidate, ...]
    end_of_candidates: bool

    def restarts(self, current: IceCredentials) -> bool:
        """New credentials mean an ICE restart (RFC 9725 section 4.3.3).
        Credentials we never learnt cannot be compared: not a restart."""
        sent = self.credentials
        return ((sent.ufrag is not None and current.ufrag is not None
                 and sent.ufrag != current.ufrag)
                or (sent.pwd is not None and current.pwd is not None
                    and sent.pwd != current.pwd))


def _attribute(line: str, name: str) -> str | None:
    prefix = f"a={name}:"
    return line[len(prefix):].strip() if line.startswith(prefix) else None


def offer_credentials(sdp: str) -> IceCredentials:
    """The first ice-ufrag/ice-pwd of an offer (BUNDLE: one ICE session)."""
    ufrag = pwd = None
    for line in sdp.splitlines():
        ufrag = ufrag or _attribute(line, "ice-ufrag")
        pwd = pwd or _attribute(line, "ice-pwd")
    return IceCredentials(ufrag, pwd)


@dataclass
class _Section:
    index: int  # -1: the session level, before any m= line
    mid: str | None = None


def parse_trickle_fragment(text: str) -> TrickleFragment:
    """Raises MalformedFragment for anything that is not SDP lines, or that
    carries neither credentials, candidates nor end-of-candidates."""
    sections = [_Section(-1)]
    found: list[tuple[_Section, str]] = []
    ufrag = pwd = None
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if _LINE.match(line) is None:
            raise MalformedFragment(f"not an SDP line: {line[:40]!r}")
        if line.startswith("m="):
            sections.append(_Section(len(sections) - 1))
        elif (mid := _attribute(line, "mid")) is not None:
            sections[-1].mid = mid
        elif (candidate := _attribute(line, "candidate")) is not None:
            if not candidate:
                raise MalformedFragment("an empty a=candidate line")
            found.append((sections[-1], f"candidate:{candidate}"))
        elif line == "a=end-of-candidates":
            end = True
        else:
            ufrag = ufrag or _attribute(line, "ice-ufrag")
            pwd = pwd or _attribute(line, "ice-pwd")
    if not found and not end and ufrag is None and pwd is None:
        raise MalformedFragment("the fragment has no ICE credentials, candidates or "
                                "end-of-candidates")
    # The mid names the media section (the fragment's m= lines need not be in
    # the offer's order); without one, its position is all there is.
    candidates = tuple(
        IceCandidate(text, section.mid,
                     None if section.mid is not None else max(section.index, 0))
        for section, text in found)
    return TrickleFragment(IceCredentials(ufrag, pwd), candidates, end)
