"""Join time: a viewer's `watch` to its first decoded frame, in Chromium.

Runs Postgres, Redis, one SFU worker and signaling as real processes, one
Chromium publisher on the publish page (fake camera), then opens the watch page
`--joins` times; each time it clicks Watch and waits for the <video> element's
first presented frame (requestVideoFrameCallback: decoded and composited).
Media stays on loopback. A benchmark, not a test: it prints medians.

With `--via-edge` a second worker starts once the publisher is live on the
first, whose capacity (2 peer connections: the publisher and one relay, the
room placement keeps for feeding an edge) sends every viewer to the second,
which relays the stream from the first (the cascade).

    .venv/bin/python bench/join_time.py --joins 20
    .venv/bin/python bench/join_time.py --joins 10 --via-edge
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from playwright.async_api import Browser, async_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.join_steps import join_steps, read_lines, summary, table, timed  # noqa: E402
from bench.stack import BenchStack  # noqa: E402
from tests.conftest import CHROMIUM_ARGS  # noqa: E402
from vilokanam.admin import grant_dev_funds  # noqa: E402
from vilokanam.services.chain import dev_accounts  # noqa: E402

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"  # the 2nd dev account
JOIN_TIMEOUT_MS = 15000
ADMISSION_LIMITS = ("VILOKANAM_SFU_MAX_CPU", "VILOKANAM_SFU_MAX_LOOP_LAG_MS")

# Click Watch, resolve with [the click's Unix time in ms, the ms until the
# first frame is presented].
MEASURE_JOIN = """async (timeout) => {
  const video = document.querySelector("#video");
  const clicked = Date.now();
  const started = performance.now();
  const first = new Promise((resolve) =>
    video.requestVideoFrameCallback(() => resolve([clicked, performance.now() - started])));
  const late = new Promise((_, reject) => setTimeout(() => reject(new Error("no frame")), timeout));
  document.querySelector("#watch").click();
  return await Promise.race([first, late]);
}"""


def post(base: str, path: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(json.load(resp))


async def join_once(browser: Browser, watch_url: str) -> tuple[float, float]:
    """(the Watch click's Unix time in ms, the ms from it to the first frame)"""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(watch_url)
        await page.wait_for_selector("body[data-ready='true']")
        await page.click("#sign-in-open")
        # a viewer other than the publisher, signed in before Watch is clicked
        await page.select_option("#dev-account", value=BOB)
        await page.click("#dev-sign-in")
        await page.wait_for_function(
            "(account) => document.querySelector('#account').textContent.trim() === account",
            arg=BOB, timeout=20000)
        await page.wait_for_selector("#watch:not([disabled])")
        clicked, took = await page.evaluate(MEASURE_JOIN, JOIN_TIMEOUT_MS)
        return float(clicked), float(took)
    finally:
        await context.close()


async def measure(base: str, joins: int, warmup_s: float,
                  start_edge: Callable[[], None] | None = None) -> list[tuple[float, float]]:
    token = post(base, "/api/dev/token", {"account": ALICE})["token"]
    stream = post(base, "/api/streams", {"title": "join-time"}, token)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=shutil.which("chromium"),
                                           args=CHROMIUM_ARGS)
        publisher = await (await browser.new_context()).new_page()
        await publisher.goto(stream["publish_url"])
        await publisher.wait_for_selector("body[data-ready='true']")
        await publisher.fill("#stream-key", stream["stream_key"])
        await publisher.click("#start")
        await publisher.wait_for_function(
            "() => document.querySelector('#state').textContent === 'live'", timeout=20000)
        if start_edge is not None:  # only now: the publisher is on the first worker
            await asyncio.to_thread(start_edge)
        await asyncio.sleep(warmup_s)
        times = [await join_once(browser, stream["watch_url"]) for _ in range(joins)]
        await browser.close()
    return times


async def run(args: argparse.Namespace) -> list[tuple[float, float]]:
    env = {"VILOKANAM_ICE_HOST_ADDRESSES": "127.0.0.1", **{
        # the worker's load admission limits, when the caller sets them
        k: v for k, v in os.environ.items() if k in ADMISSION_LIMITS}}
    async with BenchStack("vk-join-", sfu=0, env=env, overrides={
            "dev_mode": True, "token_secret": "join-time-" + "x" * 40}) as stack:
        # Through an edge: the origin's room is the publisher and one relay.
        await asyncio.to_thread(stack.add_role, "sfu",
                                **({"sfu_capacity": 2} if args.via_edge else {}))
        # The watch page signs in as a dev account: give them balance to watch.
        await grant_dev_funds(stack.settings, list(dev_accounts().values()))

        def start_edge() -> None:
            stack.add_role("sfu")

        joins = await measure(stack.settings.base_url, args.joins, args.warmup,
                              start_edge if args.via_edge else None)
        # Where the time went, from the processes' own log lines.
        lines = read_lines(role.log_dir / f"{role.kind}.log" for role in stack.all_roles())
        steps = join_steps(lines, [clicked for clicked, _ in joins],
                           [took for _, took in joins])
        print("where a join's time goes (ms after the Watch click):")
        print("\n".join(summary(steps)))
        print("\n".join(timed(lines, [clicked for clicked, _ in joins])))
        print("each join (ms after its Watch click):")
        print("\n".join(table(steps)))
        return joins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds live before joins")
    parser.add_argument("--via-edge", action="store_true",
                        help="viewers join through an edge worker relaying the stream")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        print("join_time: Debian's chromium is needed (apt-get install chromium)")
        return 2
    times = [took for _, took in asyncio.run(run(args))]
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    print(f"joins: {len(times)}  p50: {statistics.median(times):.0f} ms  "
          f"p90: {p90:.0f} ms  min: {ordered[0]:.0f} ms  max: {ordered[-1]:.0f} ms")
    print("all (ms): " + ", ".join(f"{t:.0f}" for t in times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
