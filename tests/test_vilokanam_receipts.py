"""The shared receipt core (vilokanam/receipts.py): the line format, the v1
digest and the v2 Merkle tree and proofs, each checked against an independent
computation (RFC 9162 written out recursively)."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest

from vilokanam.receipts import (
    REMARK_PREFIX,
    MerkleTree,
    batch_digest,
    charge_line,
    leaf_hash,
    merkle_remark_of,
    node_hash,
    remark_of,
    verify_inclusion,
)

SESSION_A = "11111111-1111-4111-8111-111111111111"
SESSION_B = "22222222-2222-4222-8222-222222222222"


def test_a_line_is_the_session_and_the_exact_amount_without_trailing_zeros() -> None:
    assert charge_line(SESSION_A, Decimal("0.004000000028")) == f"{SESSION_A}:0.004000000028"
    assert charge_line(SESSION_A, Decimal("3.000")) == f"{SESSION_A}:3"
    # 38 significant digits survive (NUMERIC(38, 18)); normalize() would round them.
    big = Decimal("12345678901234567890.123456789012345678")
    assert charge_line(SESSION_B, big) == f"{SESSION_B}:{big}"


def test_the_v1_digest_is_sha256_of_the_sorted_lines_whatever_their_order() -> None:
    lines = [charge_line(SESSION_B, Decimal("0.002")), charge_line(SESSION_A, Decimal("1.5"))]
    expected = hashlib.sha256(f"{SESSION_A}:1.5\n{SESSION_B}:0.002".encode()).hexdigest()
    assert batch_digest(lines) == batch_digest(list(reversed(lines))) == expected
    assert remark_of(expected) == REMARK_PREFIX + expected == f"vilokanam:settlement:v1:{expected}"
    assert batch_digest(lines[:1]) != expected


# -- v2: Merkle tree (RFC 9162), against an independent recursive reference ------

def ref_mth(lines: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 as written: MTH over already sorted, encoded lines."""
    if len(lines) == 1:
        return hashlib.sha256(b"\x00" + lines[0]).digest()
    k = 1
    while k * 2 < len(lines):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(lines[:k]) + ref_mth(lines[k:])).digest()


def ref_path(m: int, lines: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]) as written."""
    if len(lines) == 1:
        return []
    k = 1
    while k * 2 < len(lines):
        k *= 2
    if m < k:
        return ref_path(m, lines[:k]) + [ref_mth(lines[k:])]
    return ref_path(m - k, lines[k:]) + [ref_mth(lines[:k])]


def lines_of(n: int) -> list[str]:
    return [charge_line(f"{i:08x}-0000-4000-8000-000000000000", Decimal(i + 1) / 1000)
            for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 33])
def test_root_and_every_proof_match_rfc_9162_and_verify(n: int) -> None:
    lines = lines_of(n)
    tree = MerkleTree.of(list(reversed(lines)))  # sorted by the tree, not the caller
    encoded = sorted(line.encode() for line in lines)
    assert tree.root == ref_mth(encoded).hex()
    for index, line in enumerate(sorted(lines)):
        assert tree.index_of(line) == index
        proof = tree.proof(index)
        assert proof == [h.hex() for h in ref_path(index, encoded)]
        assert verify_inclusion(line, index, n, proof, tree.root)


def test_a_proof_fails_for_any_tampering() -> None:
    lines = lines_of(7)
    tree = MerkleTree.of(lines)
    index = 5
    line = tree.lines[index]
    proof = tree.proof(index)
    assert verify_inclusion(line, index, 7, proof, tree.root)
    session = line.split(":")[0]
    assert not verify_inclusion(f"{session}:999", index, 7, proof, tree.root)  # the amount
    assert not verify_inclusion(line, index - 1, 7, proof, tree.root)  # the position
    assert not verify_inclusion(line, index, 7, proof[:-1], tree.root)  # a short path
    assert not verify_inclusion(line, index, 7, [*proof, proof[0]], tree.root)  # a long one
    flipped = ("0" if proof[0][0] != "0" else "1") + proof[0][1:]
    assert not verify_inclusion(line, index, 7, [flipped, *proof[1:]], tree.root)
    assert not verify_inclusion(line, index, 7, proof, MerkleTree.of(lines[:6]).root)
    # Malformed input is a plain "no", never an exception.
    assert not verify_inclusion(line, index, 7, ["zz", *proof[1:]], tree.root)
    assert not verify_inclusion(line, index, 7, proof, "not hex")
    assert not verify_inclusion(line, 7, 7, proof, tree.root)
    assert not verify_inclusion(line, -1, 7, proof, tree.root)


def test_leaves_and_nodes_are_domain_separated() -> None:
    """A node's 64 bytes presented as a leaf does not hash to the node."""
    left, right = leaf_hash("a"), leaf_hash("b")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash("a") == hashlib.sha256(b"\x00a").digest()
    forged = (left + right).decode("latin-1")
    assert leaf_hash(forged) != node_hash(left, right)
    two = MerkleTree.of(["a", "b"])
    assert two.root == node_hash(left, right).hex() != MerkleTree.of(["ab"]).root
    assert merkle_remark_of(two.root) == "vilokanam:settlement:v2:" + two.root
    with pytest.raises(ValueError):
        MerkleTree.of([])
