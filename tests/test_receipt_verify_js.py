"""The browser's receipt verifier (signaling/static/js/receipt_verify.js) hashes
as Python does: Node runs it over the vectors Python makes
(tests/receipt_vectors.py -> tests/receipt_vectors.json) — leaf and node
hashes, roots and digests of 1 to 7 lines, inclusion proofs true and forged,
receipts as settled and tampered — and must agree with every one."""

from __future__ import annotations

import json
import shutil
import subprocess

from tests.conftest import REPO, require
from tests.receipt_vectors import VECTORS, render


def test_the_committed_vectors_are_what_python_makes() -> None:
    assert VECTORS.read_text() == render(), "stale: python -m tests.receipt_vectors"


def test_the_browser_verifier_agrees_with_python_on_every_vector() -> None:
    node = shutil.which("node")
    require(node is not None, "Node (to run the browser's receipt verifier)")
    assert node is not None
    result = subprocess.run([node, str(REPO / "tests" / "receipt_vectors.mjs")],
                            capture_output=True, text=True, timeout=120)
    summary = json.loads(result.stdout)
    assert summary["wrong"] == [] and result.returncode == 0, result.stdout + result.stderr
    vectors = json.loads(VECTORS.read_text())
    assert summary["checked"] == sum(
        len(vectors[k]) for k in ("hashes", "nodes", "inclusions", "receipts")) + 2 * len(
        vectors["trees"])
    # Both answers occur, so agreeing is not agreeing on "always true".
    assert {case["holds"] for case in vectors["inclusions"]} == {True, False}
    assert {case["problems"] == 0 for case in vectors["receipts"]} == {True, False}
