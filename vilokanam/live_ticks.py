"""The live message of ticks: what a worker publishes on `vk:ticks:live`
once a second for the watch pages -- each viewer it billed that second, with
the session's seconds so far -- and what signaling makes of it (one `tick`
event `{"seconds", "cost"}` per peer it has a listener for).

The message is sized for 100k viewers a second: the worker may spend a few
tenths of a microsecond per viewer on it, and every signaling server receives
every worker's message but cares about few of its peers. So it holds no
object per viewer and no JSON (whose encoder and decoder scan every byte of
the peer ids once more). It is three lines of ASCII:

    vk-ticks/2 12 1000000000x2,0x1
    p1,p2,p3
    BwAAAAcAAAADAAAA

1. the version, the token's decimals, and the prices in planck per second,
   run-length coded over the peers' order (`<planck>x<count>`, as the stored
   tick batch's prices are, vilokanam/metering.py);
2. the peer ids, comma-joined;
3. each peer's seconds so far, in the same order: unsigned 32-bit
   little-endian integers, base64 (C code both ways: `array`, `base64`).

The cost -- seconds × price, in tokens, as `format_amount` writes it -- is
computed exactly (integer planck, then shifted by the decimals) on signaling,
and only for the peers looked up. A peer id never holds a separator (`,` or a
line break): the workers make them with `secrets.token_urlsafe` (A-Z a-z 0-9
- _), and the encoder refuses one that does.

`decode` still reads the message of workers before this format, JSON
`{peer_id: {"seconds", "cost"}}` (during an upgrade some workers are old)."""

from __future__ import annotations

import array
import base64
import binascii
import bisect
import itertools
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple, TypeGuard

from vilokanam.money import format_amount, from_planck

MAGIC = "vk-ticks/2"
SEPARATOR = ","
# Bounds that keep every cost exact in money.py's context (200 digits): u128
# prices, u32 seconds (136 years of one session).
MAX_PRICE = 2**128 - 1
MAX_DECIMALS = 64
_U32 = next(code for code in "IL" if array.array(code).itemsize == 4)
_BIG_ENDIAN = sys.byteorder == "big"
_RUNS = re.compile(r"[0-9]{1,39}x[0-9]{1,9}(?:,[0-9]{1,39}x[0-9]{1,9})*")
_DECIMALS = re.compile(r"[0-9]{1,2}")


class LiveTick(NamedTuple):
    """One peer's metering so far: seconds billed and their cost in tokens."""

    seconds: int
    cost: str


class BadLiveMessage(ValueError):
    """The text is not a live tick message of either format."""


def encode(peers: Sequence[str], seconds: Sequence[int], prices: Sequence[int],
           decimals: int) -> str:
    """The message for `peers` (one entry each, in one order across the three
    sequences: peer id, its session's seconds so far, its price in planck per
    second); "" when there is no peer (nothing to publish). ValueError if a
    peer id holds a separator or is not ASCII, or a number is out of the
    format's range."""
    if not peers:
        return ""
    if not len(peers) == len(seconds) == len(prices):
        raise ValueError(f"{len(peers)} peers, {len(seconds)} seconds, {len(prices)} prices")
    if not 0 <= decimals <= MAX_DECIMALS:
        raise ValueError(f"decimals out of range: {decimals}")
    joined = SEPARATOR.join(peers)
    if joined.count(SEPARATOR) != len(peers) - 1 or "\n" in joined or not joined.isascii():
        raise ValueError("a peer id holds a separator or is not ASCII")
    first = prices[0]
    if prices.count(first) == len(prices):  # the usual second: one price for all
        low = high = first
        runs = f"{first}x{len(prices)}"
    else:
        low, high = min(prices), max(prices)
        runs = SEPARATOR.join(f"{price}x{sum(1 for _ in run)}"
                              for price, run in itertools.groupby(prices))
    if low < 0 or high > MAX_PRICE:
        raise ValueError("a price is out of range")
    try:
        counts = array.array(_U32, seconds)
    except OverflowError:
        raise ValueError("a count of seconds is out of range") from None
    if _BIG_ENDIAN:
        counts.byteswap()
    return f"{MAGIC} {decimals} {runs}\n{joined}\n{base64.b64encode(counts).decode('ascii')}"


def decode(text: str | bytes) -> Mapping[str, LiveTick]:
    """The message's ticks by peer id. Raises BadLiveMessage on anything but a
    whole, well-formed message, so a looked-up tick never fails later."""
    try:
        text = text.decode("ascii") if isinstance(text, bytes) else text
    except UnicodeDecodeError:
        raise BadLiveMessage("not ASCII") from None
    if text.startswith("{"):
        return _old_ticks(text)
    return CompactTicks.of(text)


class CompactTicks(Mapping[str, LiveTick]):
    """A decoded message of this format: the peers indexed (C speed: one split
    and one dict of positions), their seconds an array, each tick made -- its
    cost computed -- only when looked up."""

    def __init__(self, decimals: int, peers: list[str], seconds: array.array[int],
                 prices: list[int], ends: list[int]) -> None:
        self._decimals = decimals
        self._position = dict(zip(peers, range(len(peers)), strict=True))
        self._seconds = seconds
        self._prices = prices  # each run's price, and where the run ends (exclusive)
        self._ends = ends

    @classmethod
    def of(cls, text: str) -> CompactTicks:
        lines = text.split("\n")
        if len(lines) != 3:
            raise BadLiveMessage(f"{len(lines)} lines, not 3")
        header, peers, counts = lines
        fields = header.split(" ")
        if len(fields) != 3 or fields[0] != MAGIC:
            raise BadLiveMessage("not a vk-ticks/2 header")
        decimals, runs = fields[1:]
        if not _DECIMALS.fullmatch(decimals) or int(decimals) > MAX_DECIMALS:
            raise BadLiveMessage("bad decimals")
        if not _RUNS.fullmatch(runs):
            raise BadLiveMessage("bad price runs")
        prices: list[int] = []
        ends: list[int] = []
        for run in runs.split(SEPARATOR):
            price, count = run.split("x")
            if int(price) > MAX_PRICE or int(count) == 0:
                raise BadLiveMessage("a price run out of range")
            prices.append(int(price))
            ends.append((ends[-1] if ends else 0) + int(count))
        seconds = array.array(_U32)
        try:
            seconds.frombytes(base64.b64decode(counts, validate=True))
        except (binascii.Error, ValueError):  # ValueError: not a whole number of u32
            raise BadLiveMessage("bad seconds") from None
        if _BIG_ENDIAN:
            seconds.byteswap()
        peer_list = peers.split(SEPARATOR)
        if not len(peer_list) == len(seconds) == ends[-1]:
            raise BadLiveMessage(f"{len(peer_list)} peers, {len(seconds)} seconds, "
                                 f"{ends[-1]} prices")
        ticks = cls(int(decimals), peer_list, seconds, prices, ends)
        if len(ticks._position) != len(peer_list) or "" in ticks._position:
            raise BadLiveMessage("a peer id is empty or named twice")
        return ticks

    def __getitem__(self, peer_id: str) -> LiveTick:
        at = self._position[peer_id]
        seconds = self._seconds[at]
        price = self._prices[bisect.bisect_right(self._ends, at)]
        return LiveTick(seconds, format_amount(from_planck(price * seconds, self._decimals)))

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._position

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)


def _old_ticks(text: str) -> dict[str, LiveTick]:
    """`{peer_id: {"seconds", "cost"}}`, the message of workers before vk-ticks/2."""
    try:
        data = json.loads(text)
    except ValueError:
        raise BadLiveMessage("not JSON") from None
    if not isinstance(data, dict):
        raise BadLiveMessage("not a JSON object")
    ticks = {}
    for peer_id, tick in data.items():
        if not (isinstance(tick, dict) and _is_count(tick.get("seconds"))
                and isinstance(tick.get("cost"), str)):
            raise BadLiveMessage("a tick is not {\"seconds\": count, \"cost\": text}")
        ticks[peer_id] = LiveTick(tick["seconds"], tick["cost"])
    return ticks


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
