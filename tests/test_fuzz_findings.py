"""What schemathesis found (tests/test_fuzz_api.py, docs/reliability.md
"Fuzzing"), each pinned by its own test so it cannot come back unnoticed:
handlers that answered outside the document or with a 5xx."""

from __future__ import annotations

import pytest

from tests.api_client import Client, bearer, error_of, login


async def test_a_missing_static_file_is_the_json_404(client: Client) -> None:
    """aiohttp's add_static answered an empty 404 typed application/octet-stream."""
    for path in ("/static/0", "/static/js/nope.js", "/static/../pages.py",
                 "/static/%2e%2e/pages.py", "/static/js"):
        assert await error_of(await client.get(path), 404) == "not_found", path
    served = await client.get("/static/js/main.js")
    assert served.status == 200
    assert "javascript" in served.headers["Content-Type"]
    assert b"setUpSignIn" in await served.read()
    assert (await client.head("/static/css/app.css")).status == 200


@pytest.mark.parametrize("url", ["http://[", "https://[::1/x", "http://a.example/\x00",
                                 "javascript:alert(1)"])
async def test_a_broken_profile_image_url_is_400_not_500(client: Client,
                                                         url: str) -> None:
    """urlsplit raises on an unclosed IPv6 host, and Postgres refuses NUL: both
    were 500s."""
    token = (await login(client))["token"]
    response = await client.patch("/api/me", json={"profile_image_url": url},
                                  headers=bearer(token))
    assert await error_of(response, 400) == "invalid_profile_image_url"


async def test_an_email_with_nul_is_400_not_500(client: Client) -> None:
    token = (await login(client))["token"]
    response = await client.patch("/api/me", json={"email": "a\x00b@example.org"},
                                  headers=bearer(token))
    assert await error_of(response, 400) == "invalid_email"
    fine = await client.patch("/api/me", json={"email": "ab@example.org"},
                              headers=bearer(token))
    assert fine.status == 200, await fine.text()


async def test_tus_without_tus_resumable_is_400_and_another_version_412(
        client: Client) -> None:
    """A request without the header was 412, a status the document's checks
    take for "another version"; without it, it is no tus request at all."""
    token = (await login(client))["token"]
    created = await client.post("/api/videos", headers={
        **bearer(token), "Tus-Resumable": "1.0.0", "Upload-Length": "10"})
    assert created.status == 201, await created.text()
    path = f"/api/videos/{(await created.json())['id']}/upload"
    patch = {**bearer(token), "Content-Type": "application/offset+octet-stream",
             "Upload-Offset": "0"}
    missing = await client.patch(path, data=b"x" * 10, headers=patch)
    assert await error_of(missing, 400) == "tus_resumable_required"
    assert (await client.head(path, headers=bearer(token))).status == 400
    other = await client.patch(path, data=b"x" * 10, headers={**patch, "Tus-Resumable": "{}"})
    assert await error_of(other, 412) == "tus_version_unsupported"
    assert other.headers["Tus-Version"] == "1.0.0"
    head = await client.head(path, headers={**bearer(token), "Tus-Resumable": "1.0.0"})
    assert head.status == 200 and head.headers["Upload-Offset"] == "0"
