"""The front end's third-party code: the committed @polkadot/api bundle is
what web/build.mjs makes from web/package-lock.json's versions (rebuilt here
and compared byte for byte), it names those versions, the committed hls.js is
the locked package's file, and no page loads a script or style from anywhere
but this server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO, require
from tests.web_checks import WEB_DIR, web_packages

VENDOR = REPO / "signaling" / "static" / "vendor" / "polkadot-api.js"
HLS = REPO / "signaling" / "static" / "hls.light.min.js"
TEMPLATES = REPO / "signaling" / "templates"


def locked(name: str) -> str:
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())
    return str(lock["packages"][f"node_modules/{name}"]["version"])


def test_the_bundle_names_the_locked_versions() -> None:
    first_line = VENDOR.read_text().split("\n", 1)[0]
    assert f"@polkadot/api {locked('@polkadot/api')} " in first_line
    assert f"esbuild {locked('esbuild')} " in first_line
    package = json.loads((WEB_DIR / "package.json").read_text())
    for name, version in {**package["dependencies"], **package["devDependencies"]}.items():
        assert version == locked(name), f"{name}: pinned exactly, as locked"


def test_the_committed_bundle_is_the_build_of_its_source(tmp_path: Path) -> None:
    node = shutil.which("node")
    require(node is not None, "Node (to rebuild the web bundle)")
    assert node is not None
    web_packages()  # npm ci of web/ when it is missing
    subprocess.run([node, "build.mjs"], cwd=WEB_DIR, check=True, timeout=300,
                   env={**os.environ, "VILOKANAM_WEB_OUTDIR": str(tmp_path)})
    assert (tmp_path / "polkadot-api.js").read_bytes() == VENDOR.read_bytes(), (
        "signaling/static/vendor/ is stale: cd web && npm ci --ignore-scripts && npm run build")


def test_the_committed_hls_js_is_the_locked_package_file() -> None:
    web_packages()  # npm ci of web/ when it is missing
    installed = WEB_DIR / "node_modules" / "hls.js"
    assert json.loads((installed / "package.json").read_text())["version"] == locked("hls.js")
    assert (installed / "dist" / "hls.light.min.js").read_bytes() == HLS.read_bytes(), (
        "signaling/static/hls.light.min.js is stale: cd web && npm ci --ignore-scripts && "
        "npm run copy")


def test_pages_load_only_our_own_scripts_and_styles() -> None:
    for template in TEMPLATES.glob("*.html"):
        html = template.read_text()
        for url in re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html):
            assert url.startswith("/static/") or url == "data:,", (template.name, url)
        assert "<style" not in html and " style=" not in html, template.name  # CSP: no inline
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", html), template.name  # no inline handlers
