"""What a settlement batch commits to on chain, and how a receipt proves a
charge was in it. Shared by billing (which writes the remark) and signaling
(which serves receipts): neither imports the other.

A batch's lines are its charges, one per viewing session:
`<stream_viewer_id>:<amount>` (tokens, plain decimal, no trailing zeros), and
one per tip or subscription: `<tip|subscription>:<payment id>:<amount>`.
The v1 remark carried the SHA-256 digest of all the lines (old settlements
still verify that way); the v2 remark carries the root of a Merkle tree of
them, so a receipt shows one line and its path (docs/settlement.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal

from vilokanam.money import format_amount

REMARK_PREFIX = "vilokanam:settlement:v1:"
DIGEST_ALGORITHM = ("sha256 over the UTF-8 bytes of the lines sorted ascending and joined "
                    "with '\\n' (no trailing newline); a line is '<stream_viewer_id>:<amount>', "
                    "amount in tokens as a plain decimal without trailing zeros; the batch's "
                    f"System.remark is '{REMARK_PREFIX}' + the digest in lowercase hex")


def charge_line(stream_viewer_id: str, amount: Decimal) -> str:
    return f"{stream_viewer_id}:{format_amount(amount)}"


def payment_line(payment_type: str, payment_id: str, amount: Decimal) -> str:
    """A tip's or a subscription's line: `<type>:<payment id>:<amount>`."""
    return f"{payment_type}:{payment_id}:{format_amount(amount)}"


def item_line(payment_type: str, stream_viewer_id: str | None, payment_id: str,
              amount: Decimal) -> str:
    """The line of one settlement item, whatever its kind."""
    if payment_type == "stream_view":
        assert stream_viewer_id is not None
        return charge_line(stream_viewer_id, amount)
    return payment_line(payment_type, payment_id, amount)


def batch_digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def remark_of(digest: str) -> str:
    return REMARK_PREFIX + digest


# -- v2: a Merkle tree of the lines (RFC 9162, section 2.1) ----------------------
#
# The v2 remark carries the root of a Merkle tree over the batch's lines sorted
# ascending (by their UTF-8 bytes), so a receipt proves one line with a path of
# sibling hashes and discloses no other line. The tree is Certificate
# Transparency's (RFC 9162 §2.1.1): leaves and nodes are domain-separated by a
# first byte, so no leaf can pose as a node (or back), and an odd node is
# carried up, never duplicated (which would let two different batches share a
# root).
#
#   leaf(line)     = sha256(0x00 || utf8(line))
#   node(left, r)  = sha256(0x01 || left || right)
#   MTH([leaf])    = leaf
#   MTH(D[0:n])    = node(MTH(D[0:k]), MTH(D[k:n]))   k: largest power of 2 < n

MERKLE_REMARK_PREFIX = "vilokanam:settlement:v2:"
DIGEST_V1 = "digest-v1"
MERKLE_V2 = "merkle-v2"
PROOF_ALGORITHM = (
    "RFC 9162 (Certificate Transparency v2) Merkle tree over the batch's lines sorted "
    "ascending by their UTF-8 bytes: leaf = sha256(0x00 || line), node = sha256(0x01 || "
    "left || right), split at the largest power of two below the number of leaves; "
    "'proof' is the inclusion path (sibling hashes, leaf first) of the leaf at 'leaf_index' "
    "in a tree of 'leaf_count' leaves, checked as RFC 9162 section 2.1.3.2 says; the "
    f"batch's System.remark is '{MERKLE_REMARK_PREFIX}' + the root in lowercase hex")

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(line: str) -> bytes:
    return hashlib.sha256(_LEAF + line.encode()).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root_of(leaves: list[bytes]) -> bytes:
    # Bottom-up, carrying an odd last node up: the same tree as the recursive
    # definition (each level pairs from the left; a left subtree is always full).
    level = leaves
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


@dataclass(frozen=True)
class MerkleTree:
    """The tree of one batch's lines (sorted here)."""

    lines: tuple[str, ...]

    @classmethod
    def of(cls, lines: list[str]) -> MerkleTree:
        if not lines:
            raise ValueError("a batch has at least one line")
        return cls(tuple(sorted(lines)))

    @property
    def root(self) -> str:
        return _root_of([leaf_hash(line) for line in self.lines]).hex()

    def index_of(self, line: str) -> int:
        return self.lines.index(line)

    def proof(self, index: int) -> list[str]:
        """The inclusion path of leaf `index` (RFC 9162 §2.1.3.1), leaf first."""
        leaves = [leaf_hash(line) for line in self.lines]
        path: list[bytes] = []
        lo, hi = 0, len(leaves)
        # Top-down: at each split the sibling is the root of the other half.
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(_root_of(leaves[lo + k:hi]))
                hi = lo + k
            else:
                path.append(_root_of(leaves[lo:lo + k]))
                lo = lo + k
        return [h.hex() for h in reversed(path)]


def verify_inclusion(line: str, index: int, count: int, proof: list[str], root: str) -> bool:
    """RFC 9162 §2.1.3.2: does `proof` put `line` at `index` of a tree of
    `count` leaves whose root is `root`? Malformed input is simply False."""
    try:
        path = [bytes.fromhex(p) for p in proof]
        wanted = bytes.fromhex(root)
    except (TypeError, ValueError):
        return False
    if not 0 <= index < count or any(len(p) != 32 for p in path):
        return False
    fn, sn = index, count - 1
    r = leaf_hash(line)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == wanted


def merkle_remark_of(root: str) -> str:
    return MERKLE_REMARK_PREFIX + root
