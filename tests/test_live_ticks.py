"""The live message of ticks (vilokanam/live_ticks.py): what a worker encodes
decodes on signaling to the same seconds and the same cost text the worker
formatted before (`format_amount` of the Decimal price × seconds), at every
price; the old JSON message still reads; anything malformed is refused with
BadLiveMessage, never another exception, and never half-read."""

from __future__ import annotations

import json
import random
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.streams import _new_peer_id
from vilokanam import live_ticks
from vilokanam.live_ticks import MAX_PRICE, BadLiveMessage, LiveTick
from vilokanam.money import format_amount, from_planck

NUMERIC_18 = Decimal("1e-18")  # the scale prices come back from Postgres with


def cost_before(price_planck: int, seconds: int, decimals: int) -> str:
    """The worker's cost text before this format: the session's price as
    Postgres gives it (NUMERIC(38, 18)) times its seconds, format_amount'ed --
    here without the default context's rounding past 28 digits, which the
    worker's product had (a price of 10^6 tokens for a month is 31 digits)."""
    with localcontext(prec=100):
        return format_amount(from_planck(price_planck, decimals).quantize(NUMERIC_18) * seconds)


def test_round_trip_gives_each_peer_its_seconds_and_exact_cost() -> None:
    peers = [_new_peer_id() for _ in range(6)]
    seconds = [7, 1, 3600, 0, 86_400 * 30, 2]
    prices = [10**9, 10**9, 0, 1, 2**60 + 1, 10**9]  # runs: 2, 1, 1, 1, 1
    ticks = live_ticks.decode(live_ticks.encode(peers, seconds, prices, 12))
    assert len(ticks) == 6 and set(ticks) == set(peers)
    assert ticks[peers[0]] == LiveTick(7, "0.007")
    assert ticks[peers[1]] == LiveTick(1, "0.001")
    assert ticks[peers[2]] == LiveTick(3600, "0")  # a subscriber: priced 0
    assert ticks[peers[3]] == LiveTick(0, "0")
    # > 2^53 planck a second: exact, not a float's approximation
    assert ticks[peers[4]] == LiveTick(2_592_000, "2988372539940.947364384")
    assert ticks[peers[5]] == LiveTick(2, "0.002")
    for peer, count, price in zip(peers, seconds, prices, strict=True):
        assert ticks[peer].cost == cost_before(price, count, 12)


@pytest.mark.parametrize("decimals", [0, 6, 12, 18])
@pytest.mark.parametrize("price", [0, 1, 999, 10**9, 10**12, 2**53 + 1, 10**20 + 7])
def test_the_cost_text_is_format_amount_of_the_price_times_the_seconds(
        price: int, decimals: int) -> None:
    peers = [_new_peer_id() for _ in range(3)]
    seconds = [1, 10, 12_345]
    ticks = live_ticks.decode(live_ticks.encode(peers, seconds, [price] * 3, decimals))
    for peer, count in zip(peers, seconds, strict=True):
        assert ticks[peer] == LiveTick(count, cost_before(price, count, decimals))


def test_the_largest_price_and_count_stay_exact() -> None:
    ticks = live_ticks.decode(live_ticks.encode(["p"], [2**32 - 1], [MAX_PRICE], 12))
    assert ticks["p"].cost == format_amount(from_planck(MAX_PRICE * (2**32 - 1), 12))


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, MAX_PRICE)),
                min_size=1, max_size=50),
       st.integers(0, 18))
def test_any_audience_round_trips(viewers: list[tuple[int, int]], decimals: int) -> None:
    peers = [f"peer{k}" for k in range(len(viewers))]
    text = live_ticks.encode(peers, [s for s, _ in viewers], [p for _, p in viewers], decimals)
    ticks = live_ticks.decode(text.encode())  # Redis hands signaling bytes
    assert list(ticks) == peers
    for peer, (count, price) in zip(peers, viewers, strict=True):
        assert ticks[peer] == LiveTick(count, format_amount(from_planck(price * count, decimals)))


def test_no_viewer_is_no_message() -> None:
    assert live_ticks.encode([], [], [], 12) == ""


def test_the_workers_peer_ids_never_hold_a_separator() -> None:
    peers = [_new_peer_id() for _ in range(2000)]
    assert not any("," in p or "\n" in p for p in peers)
    ticks = live_ticks.decode(live_ticks.encode(peers, [1] * 2000, [5] * 2000, 12))
    assert list(ticks) == peers


@pytest.mark.parametrize(("peers", "seconds", "prices", "decimals"), [
    (["a,b"], [1], [1], 12),  # a peer id with the separator
    (["a\nb"], [1], [1], 12),  # ... with the line break
    (["café"], [1], [1], 12),  # not ASCII
    (["a", "b"], [1], [1, 1], 12),  # the sequences differ in length
    (["a"], [-1], [1], 12),
    (["a"], [2**32], [1], 12),
    (["a"], [1], [-1], 12),
    (["a", "b"], [1, 1], [1, MAX_PRICE + 1], 12),
    (["a"], [1], [1], -1),
    (["a"], [1], [1], 65),
])
def test_the_encoder_refuses_what_the_format_cannot_say(
        peers: list[str], seconds: list[int], prices: list[int], decimals: int) -> None:
    with pytest.raises(ValueError):
        live_ticks.encode(peers, seconds, prices, decimals)


def test_the_old_json_message_still_reads() -> None:
    old = json.dumps({"p1": {"seconds": 7, "cost": "0.007"}, "p2": {"seconds": 99, "cost": "9"}})
    for text in (old, old.encode()):
        assert dict(live_ticks.decode(text)) == {"p1": LiveTick(7, "0.007"),
                                                 "p2": LiveTick(99, "9")}


GOOD = live_ticks.encode(["p1", "p2"], [7, 3], [10**9, 0], 12)


@pytest.mark.parametrize("text", [
    "", "garbage", "\n\n", GOOD + "\n", GOOD.replace("vk-ticks/2", "vk-ticks/3"),
    GOOD.replace(" 12 ", " 99 "), GOOD.replace(" 12 ", " x "), GOOD.replace(" 12 ", "  12 "),
    GOOD.replace("1000000000x1", "1000000000x0"),  # a run of no peers
    GOOD.replace("1000000000x1", "1000000000x2"),  # more prices than peers
    GOOD.replace("1000000000x1", f"{2**128}x1"),  # beyond u128
    GOOD.replace("1000000000x1", "1e9x1"),
    GOOD.replace("p1,p2", "p1"), GOOD.replace("p1,p2", "p1,p1"), GOOD.replace("p1,p2", ",p2"),
    GOOD.rsplit("\n", 1)[0] + "\n!!!!",  # not base64
    GOOD.rsplit("\n", 1)[0] + "\nAAA=",  # 2 bytes: not a whole u32
    GOOD.rsplit("\n", 1)[0] + "\nAAAAAA==",  # one u32 for two peers
    b"\xff\xfe", "{", "[]", "{\"p\": 5}", "{\"p\": {\"seconds\": \"7\", \"cost\": \"1\"}}",
    "{\"p\": {\"seconds\": true, \"cost\": \"1\"}}", "{\"p\": {\"seconds\": 7, \"cost\": 1}}",
    "{\"p\": {\"seconds\": -1, \"cost\": \"1\"}}", "{\"p\": {\"seconds\": 7}}",
])
def test_malformed_messages_are_refused_whole(text: str | bytes) -> None:
    with pytest.raises(BadLiveMessage):
        live_ticks.decode(text)


def test_a_mangled_message_is_refused_or_reads_without_failing() -> None:
    """Truncated or bit-flipped messages: BadLiveMessage or a message whose
    every tick can be looked up -- never another exception, at decode or later."""
    text = live_ticks.encode([_new_peer_id() for _ in range(20)], list(range(20)),
                             [10**9] * 10 + [0] * 10, 12)
    chance = random.Random(15)
    for _ in range(2000):
        mangled = bytearray(text.encode())
        if chance.random() < 0.5:
            del mangled[chance.randrange(len(mangled)):]
        else:
            mangled[chance.randrange(len(mangled))] ^= 1 << chance.randrange(8)
        try:
            ticks = live_ticks.decode(bytes(mangled))
        except BadLiveMessage:
            continue
        for peer in ticks:
            assert ticks[peer].seconds >= 0
