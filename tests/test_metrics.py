"""What an operator scrapes: each role's /metrics, from the real processes,
parsed as Prometheus does, has the families dashboards and alerts need, with
the right types; request durations are labelled by route template."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import ROLE_PORT, http_get, start_role, wait_healthy
from vilokanam.config import Settings

DURATION = "vilokanam_http_request_duration_seconds"
EXPECTED = {
    "signaling": {DURATION: "histogram", "vilokanam_ws_connections": "gauge",
                  "vilokanam_auth_failures_total": "counter"},
    "sfu": {"vilokanam_sfu_live_streams": "gauge", "vilokanam_sfu_viewers": "gauge",
            "vilokanam_sfu_frames_forwarded_total": "counter",
            "vilokanam_sfu_bytes_forwarded_total": "counter",
            "vilokanam_sfu_viewer_queue_drops_total": "counter",
            "vilokanam_sfu_keyframe_requests_total": "counter",
            "vilokanam_ticks_emitted_total": "counter", DURATION: "histogram"},
    "billing": {"vilokanam_ticks_flushed_total": "counter",
                "vilokanam_ticks_dropped_total": "counter",
                "vilokanam_flush_lag_seconds": "histogram",
                "vilokanam_settlements_total": "counter", DURATION: "histogram"},
}


@pytest.fixture
def role_urls(db: object, redis: object, settings: Settings,
              tmp_path: Path) -> Iterator[dict[str, str]]:
    """The three roles running as `vilokanam <role>`, by base URL."""
    procs = {role: start_role(settings, role, tmp_path) for role in EXPECTED}
    try:
        urls = {}
        for role, proc in procs.items():
            port = getattr(settings, ROLE_PORT[role])
            wait_healthy(proc, port)
            urls[role] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs.values():
            proc.stop()


def scrape(base_url: str) -> dict[str, Metric]:
    status, body = http_get(f"{base_url}/metrics")
    assert status == 200
    # The parser names a counter's family without `_total`: key it as exposed.
    return {(f"{m.name}_total" if m.type == "counter" else m.name): m
            for m in text_string_to_metric_families(body.decode())}


def duration_routes(families: dict[str, Metric]) -> set[tuple[str, str]]:
    return {(s.labels["route"], s.labels["status"]) for s in families[DURATION].samples
            if s.name.endswith("_count")}


def test_every_role_exposes_what_an_operator_needs(role_urls: dict[str, str]) -> None:
    signaling, ids = role_urls["signaling"], [str(uuid.uuid4()), str(uuid.uuid4())]
    http_get(f"{signaling}/api/streams/{ids[0]}")  # a matched route's 404
    http_get(f"{signaling}/no/such/{ids[1]}")  # no route at all
    http_get(f"{role_urls['sfu']}/control/stats")
    for role, base_url in role_urls.items():
        families = scrape(base_url)
        types = {name: families[name].type for name in EXPECTED[role] if name in families}
        assert types == EXPECTED[role], role
    routes = duration_routes(scrape(signaling))
    # Templates, never raw paths: the uuids above are nowhere in the labels.
    assert ("/api/streams/{stream_id}", "404") in routes
    assert ("unmatched", "404") in routes
    assert not [route for route, _ in routes if any(i in route for i in ids)]
    assert ("/control/stats", "200") in duration_routes(scrape(role_urls["sfu"]))
    assert ("/healthz", "200") in duration_routes(scrape(role_urls["billing"]))


def test_every_role_counts_its_tasks_by_coroutine(role_urls: dict[str, str]) -> None:
    """What a growing task count is made of (the soak's first question): the
    by-coroutine gauge adds up to the total, and names the worker's clock."""
    for role, base_url in role_urls.items():
        families = scrape(base_url)
        total = families["vilokanam_asyncio_tasks"].samples[0].value
        by_coroutine = {s.labels["coroutine"]: s.value
                        for s in families["vilokanam_asyncio_tasks_by_coroutine"].samples}
        assert sum(by_coroutine.values()) == total > 0, role
        # the handler serving this very scrape runs in aiohttp's request handler
        assert by_coroutine.get("aiohttp.web_protocol:RequestHandler.start", 0) >= 1, role
    sfu = {s.labels["coroutine"]: s.value for s in
           scrape(role_urls["sfu"])["vilokanam_asyncio_tasks_by_coroutine"].samples}
    assert sfu["vilokanam.tasks:run_forever"] >= 5  # the worker's clock loops
