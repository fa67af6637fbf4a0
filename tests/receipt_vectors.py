"""The shared test vectors of the receipt hashes: made here by Python
(vilokanam/receipts.py, vilokanam/receipt_check.py), checked by Node against
the browser's verifier (tests/receipt_vectors.mjs runs
signaling/static/js/receipt_verify.js). `python -m tests.receipt_vectors`
rewrites tests/receipt_vectors.json; tests/test_receipt_verify_js.py fails
when the committed file is not what this makes."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from vilokanam.receipt_check import check_arithmetic
from vilokanam.receipts import (
    DIGEST_V1,
    MERKLE_V2,
    MerkleTree,
    batch_digest,
    charge_line,
    leaf_hash,
    merkle_remark_of,
    node_hash,
    payment_line,
    remark_of,
    verify_inclusion,
)

VECTORS = Path(__file__).with_name("receipt_vectors.json")

SESSIONS = [f"{n:08x}-1111-4222-8333-{n:012x}" for n in range(1, 8)]
AMOUNTS = [Decimal("0.000000000001"), Decimal("4"), Decimal("1.5"), Decimal("12.000000000007"),
           Decimal("0.25"), Decimal("3"), Decimal("100.1")]


def _lines(n: int) -> list[str]:
    lines = [charge_line(s, a) for s, a in zip(SESSIONS[:n], AMOUNTS, strict=False)]
    if n > 2:  # a tip's line among the charges, as real batches have
        lines[-1] = payment_line("tip", SESSIONS[n - 1], AMOUNTS[n - 1])
    return lines


def _receipt_batch(lines: list[str], index_in: int, commitment: str) -> tuple[dict[str, Any],
                                                                          dict[str, Any]]:
    line = lines[index_in]
    kind, _, rest = line.partition(":")
    if kind == "tip":
        payment_id, _, amount = rest.rpartition(":")
        receipt: dict[str, Any] = {"payment_id": payment_id, "payment_type": "tip"}
    else:
        amount = rest
        receipt = {"stream_viewer_id": kind}
    batch: dict[str, Any] = {"settlement_id": "batch-1", "status": "completed", "amount": amount,
                             "line": line, "commitment": commitment}
    if commitment == MERKLE_V2:
        tree = MerkleTree.of(lines)
        index = tree.index_of(line)
        batch.update(root=tree.root, proof=tree.proof(index), leaf_index=index,
                     leaf_count=len(lines), remark=merkle_remark_of(tree.root))
    else:
        digest = batch_digest(lines)
        batch.update(digest=digest, lines=sorted(lines), remark=remark_of(digest))
    return receipt, batch


def _forgeries(batch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    session_line = batch["line"]
    forged: dict[str, dict[str, Any]] = {}

    def change(name: str, **fields: Any) -> None:
        copied = copy.deepcopy(batch)
        copied.update(fields)
        forged[name] = copied

    head, _, _ = session_line.rpartition(":")
    change("a larger amount", amount="999", line=f"{head}:999")
    change("an amount that is no decimal", amount="1e3")
    if batch["commitment"] == MERKLE_V2:
        if batch["proof"]:
            first = batch["proof"][0]
            change("a changed proof", proof=[("1" if first[0] == "0" else "0") + first[1:],
                                             *batch["proof"][1:]])
            change("a shorter proof", proof=batch["proof"][1:])
        change("another leaf position", leaf_index=(batch["leaf_index"] + 1) % batch["leaf_count"])
        change("a remark for another root", remark=merkle_remark_of("00" * 32))
    else:
        change("a changed line list", lines=[batch["lines"][0] + "1", *batch["lines"][1:]])
        change("a remark for another digest", remark=remark_of("00" * 32))
    return forged


def vectors() -> dict[str, Any]:
    hashes = [{"line": line, "leaf": leaf_hash(line).hex()} for line in _lines(7)]
    hashes.append({"line": "ünïcode:1", "leaf": leaf_hash("ünïcode:1").hex()})
    nodes = [{"left": a["leaf"], "right": b["leaf"],
              "node": node_hash(bytes.fromhex(a["leaf"]), bytes.fromhex(b["leaf"])).hex()}
             for a, b in zip(hashes, hashes[1:], strict=False)]
    trees = []
    for n in range(1, 8):
        lines = _lines(n)
        tree = MerkleTree.of(lines)
        trees.append({"lines": lines, "root": tree.root, "digest": batch_digest(lines),
                      "proofs": [tree.proof(i) for i in range(n)]})
    inclusions = []
    for tree_case in trees:
        lines, root = sorted(tree_case["lines"]), tree_case["root"]
        for i, proof in enumerate(tree_case["proofs"]):
            for line, index, path in ((lines[i], i, proof),
                                      (lines[i] + "0", i, proof),
                                      (lines[i], (i + 1) % len(lines), proof),
                                      (lines[i], i, proof[:-1])):
                inclusions.append({"line": line, "index": index, "count": len(lines),
                                   "proof": path, "root": root,
                                   "holds": verify_inclusion(line, index, len(lines), path, root)})
    receipts = []
    for commitment in (MERKLE_V2, DIGEST_V1):
        for n, at in ((1, 0), (3, 1), (3, 2), (6, 4)):
            receipt, batch = _receipt_batch(_lines(n), at, commitment)
            cases = {"as settled": batch, **_forgeries(batch)}
            for name, case in cases.items():
                receipts.append({"name": f"{commitment}, {n} lines: {name}", "receipt": receipt,
                                 "batch": case, "problems": len(check_arithmetic(receipt, case))})
    return {"about": __doc__.splitlines()[0], "hashes": hashes, "nodes": nodes, "trees": trees,
            "inclusions": inclusions, "receipts": receipts}


def render() -> str:
    return json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    VECTORS.write_text(render())
