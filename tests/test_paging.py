"""Every paged list keeps the document's promise (signaling/paging.py): `limit`
1..200 with a larger one refused (schemathesis found 201 quietly cut to 200),
and any `offset` up to 2^63-1 a valid, empty page (one past 10 digits was
refused)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_client import ALICE_42, BOB_42, Client, bearer, error_of, login

UNKNOWN = "00000000-0000-0000-0000-000000000000"
OFFSET_MAX = 2**63 - 1
# (path, list field, takes offset): keyset-paged comments take `before` instead.
LISTS = [("/api/streams", "streams", True), ("/api/me/streams", "streams", True),
         ("/api/me/payouts", "payouts", True), ("/api/me/sessions", "sessions", True),
         ("/api/me/following", "users", True), (f"/api/users/{BOB_42}/followers", "users", True),
         (f"/api/users/{BOB_42}/following", "users", True), ("/api/videos", "videos", True)]


@pytest.mark.parametrize(("path", "field", "_"), LISTS)
async def test_a_limit_past_200_is_refused_and_a_huge_offset_is_an_empty_page(
        client: Client, path: str, field: str, _: bool) -> None:
    token = (await login(client, ALICE_42))["token"]
    await login(client, BOB_42)
    auth = bearer(token)
    for limit in ("201", "100000", "0", "-1", "1.5", "%D9%A3"):
        response = await client.get(f"{path}?limit={limit}", headers=auth)
        assert await error_of(response, 400) == "invalid_paging", (path, limit)
    response = await client.get(f"{path}?limit=200&offset={OFFSET_MAX}", headers=auth)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    assert (body[field], body["limit"], body["offset"]) == ([], 200, OFFSET_MAX)
    response = await client.get(f"{path}?offset={OFFSET_MAX + 1}", headers=auth)
    assert await error_of(response, 400) == "invalid_paging"


@pytest.mark.parametrize("path", [f"/api/streams/{UNKNOWN}/comments",
                                  f"/api/videos/{UNKNOWN}/comments"])
async def test_keyset_lists_refuse_a_limit_past_200_too(client: Client,
                                                        path: str) -> None:
    assert await error_of(await client.get(f"{path}?limit=201"), 400) == "invalid_paging"
