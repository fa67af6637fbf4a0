"""What the browser tests check on every page besides their flow: axe-core's
accessibility rules (the npm package from web/package-lock.json, served to the
page from this origin by the test, never a CDN) and screenshots for docs/."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from playwright.async_api import Page, Route

from tests.conftest import REPO, require

WEB_DIR = REPO / "web"
AXE_FILE = WEB_DIR / "node_modules" / "axe-core" / "axe.min.js"
AXE_URL_PATH = "/__test__/axe.min.js"  # a test-only path: the app has no such route
SCREENSHOT_DIR = REPO / "docs" / "screenshots"
SERIOUS = ("serious", "critical")


def _locked_version(name: str) -> str:
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())
    return str(lock["packages"][f"node_modules/{name}"]["version"])


def _installed_version(name: str) -> str | None:
    package = WEB_DIR / "node_modules" / name / "package.json"
    return str(json.loads(package.read_text())["version"]) if package.exists() else None


# The web/ packages the tests read from node_modules: `npm ci` when one is not the locked one.
TEST_PACKAGES = ("axe-core", "hls.js", "esbuild")


def web_packages() -> None:
    """web/node_modules as web/package-lock.json says; `npm ci` when it is not."""
    if any(_installed_version(name) != _locked_version(name) for name in TEST_PACKAGES):
        npm = shutil.which("npm")
        require(npm is not None, "npm (for the web packages: axe-core, hls.js, esbuild)")
        assert npm is not None
        subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                        "--loglevel=error"], cwd=WEB_DIR, check=True, timeout=600,
                       capture_output=True)
    for name in TEST_PACKAGES:
        assert _installed_version(name) == _locked_version(name), name


def axe_source() -> str:
    """axe.min.js of the locked version."""
    web_packages()
    return AXE_FILE.read_text()


async def serve_axe(page: Page) -> None:
    """Answer AXE_URL_PATH on the page's own origin, so the strict CSP
    (script-src 'self') lets the test load axe without loosening it."""
    source = axe_source()

    async def fulfil(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/javascript", body=source)

    await page.route(f"**{AXE_URL_PATH}", fulfil)


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now
    (WCAG 2.x A/AA and best-practice rules). serve_axe(page) first."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(url=AXE_URL_PATH)
    results = await page.evaluate("""async () => {
      const r = await axe.run(document, {resultTypes: ["violations"]});
      return r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5)}));
    }""")
    return [v for v in results if v["impact"] in SERIOUS]


async def assert_accessible(page: Page, what: str) -> None:
    violations = await axe_violations(page)
    assert violations == [], f"{what}: {json.dumps(violations, indent=1)}"


async def screenshot(page: Page, name: str) -> Path:
    """docs/screenshots/<name>.png, the README shows them."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
