"""The project's docs stay true and self-contained: README's route table
lists every route of the signaling app, every file of the repository the docs
name exists, and nothing in the repository cites a file outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from signaling.app import create_app
from vilokanam.config import Settings

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_METHOD = re.compile(r"^[A-Z]+$")
_METHOD_PATH = re.compile(r"^([A-Z]+) (/\S*)$")


def _normal(path: str) -> str:
    """`/api/streams/{id}?status=live` and `/api/streams/{stream_id}` alike."""
    return re.sub(r"\{[^}]*\}", "{}", path.split("?", 1)[0])


def readme_routes(text: str) -> set[tuple[str, str]]:
    """(method, path) of each row of the "HTTP API and pages" table. A row's
    first cell names `METHOD /path` items; a bare `/path` takes the methods
    before it (`GET /healthz`, `/readyz`; `PATCH`, `DELETE` `/x`, `/y`)."""
    section = text.split("## HTTP API and pages", 1)[1].split("\n## ", 1)[0]
    found: set[tuple[str, str]] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        methods: list[str] = []
        after_path = False
        for span in re.findall(r"`([^`]*)`", row.split(" | ", 1)[0]):
            if _METHOD.match(span):
                methods = [span] if after_path else [*methods, span]
                after_path = False
            elif match := _METHOD_PATH.match(span):
                # `POST` / `DELETE /x`: the bare methods before name /x too
                before = [] if after_path else methods
                methods, after_path = [match.group(1)], True
                found |= {(method, _normal(match.group(2)))
                          for method in (*before, match.group(1))}
            elif span.startswith("/"):
                found |= {(method, _normal(span)) for method in methods}
                after_path = True
    return found


def app_routes() -> set[tuple[str, str]]:
    app = create_app(Settings.from_env({}))
    found = set()
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical
        if path.startswith("/static"):
            path = "/static/{file}"
        found.add((route.method, _normal(path)))
    # aiohttp adds a HEAD to every GET by itself; a HEAD of its own is listed
    return {(method, path) for method, path in found
            if method != "HEAD" or ("GET", path) not in found}


def test_the_readme_route_table_lists_every_route_and_no_other() -> None:
    listed = readme_routes((REPO / "README.md").read_text())
    routes = app_routes()
    assert routes - listed == set(), "routes missing from README's table"
    assert listed - routes == set(), "README lists routes the app does not have"


def test_the_route_table_parser_reads_every_form() -> None:
    table = ("## HTTP API and pages\n| a | b | c |\n|---|---|---|\n"
             "| `GET /a/{id}?x=1`, `/b` | none | x |\n"
             "| `PATCH`, `DELETE` `/c/{x}`, `/d` (the `Location`) | y | `POST /not/here` |\n"
             "| `POST /e` `{\"f\"}` | none | z |\n"
             "| `POST` / `DELETE /g` | none | z |\n## Next\n| `GET /nope` | | |\n")
    assert readme_routes(table) == {("GET", "/a/{}"), ("GET", "/b"), ("PATCH", "/c/{}"),
                                    ("DELETE", "/c/{}"), ("PATCH", "/d"), ("DELETE", "/d"),
                                    ("POST", "/e"), ("POST", "/g"), ("DELETE", "/g")}


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    return [REPO / name for name in listed if (REPO / name).is_file()]


# What citing a file outside the repository looks like: the design notes and
# briefs the project was written from, absolute paths of one machine.
_OUTSIDE = re.compile(r"\.\./shared|DESIGN\.md|STANDARDS\.md|COORDINATION\.md|\bDocs/"
                      r"|/work/|/home/(?!node\b|vilokanam\b)")


def test_nothing_cites_a_file_outside_the_repository() -> None:
    me = Path(__file__).resolve()
    cited = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for path in tracked_files() if path != me
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if _OUTSIDE.search(line)]
    assert cited == []


def test_every_repository_file_the_docs_name_exists() -> None:
    # the code's folders (`chain/…` in the docs is also the dev data dir's)
    top = {"vilokanam", "signaling", "sfu", "billing", "routing", "tests", "bench", "sql",
           "docs"}
    missing = []
    for doc in DOCS:
        for name in re.findall(r"`([\w./-]+\.(?:py|md|sql|yml|toml|json|js|css|sh))`",
                               doc.read_text()):
            if name.split("/", 1)[0] in top and not (REPO / name).exists():
                missing.append(f"{doc.name}: {name}")
    assert missing == []
