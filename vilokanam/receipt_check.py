"""`vilokanam verify-receipt`: check a receipt against the chain, trusting
nothing the platform says that the chain does not confirm.

For every completed batch the receipt names, two checks:

1. the arithmetic, offline — the batch's line is this receipt's charge
   (a viewing session's `<stream_viewer_id>:<amount>`, or a tip's, a
   subscription's or a video view's `<type>:<payment id>:<amount>`), and it
   leads to the batch's commitment: its Merkle path to the root (v2), or the
   digest of the batch's lines (v1);
2. the chain — the block is the node's finalized block of that number (on
   the chain whose genesis the receipt names), the extrinsic at the receipt's
   index in it has the receipt's hash, is a `Utility.batch_all` that
   succeeded, and its one `System.remark` is the remark for that commitment.

The chain is read through the standard RPCs only (a real node will do)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from vilokanam.receipts import (
    DIGEST_V1,
    MERKLE_V2,
    REMARK_PREFIX,
    batch_digest,
    charge_line,
    merkle_remark_of,
    payment_line,
    verify_inclusion,
)


class ReceiptUnreadable(ValueError):
    """The input is not a receipt (not JSON, or fields missing / of a wrong type)."""


class ChainUnreachable(ConnectionError):
    """The node did not answer."""


@dataclass(frozen=True)
class OnChainBatch:
    """What the chain says about one extrinsic."""

    finalized: bool  # its block is the finalized chain's block of that number
    extrinsic_hash: str | None  # blake2b-256 of the bytes at that index (None: no such index)
    is_batch_all: bool
    remarks: tuple[str, ...]
    success: bool
    genesis_hash: str


@dataclass
class Verdict:
    checked: list[str] = field(default_factory=list)  # settlement ids that hold
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return bool(self.checked) and not self.problems


ChainReader = Callable[[dict[str, Any]], OnChainBatch]


def parse_receipt(text: str) -> dict[str, Any]:
    try:
        receipt = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReceiptUnreadable(f"not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(receipt, dict):
        raise ReceiptUnreadable("a receipt is a JSON object")
    if not isinstance(receipt.get("stream_viewer_id"), str) and not (
            isinstance(receipt.get("payment_id"), str)
            and isinstance(receipt.get("payment_type"), str)):
        raise ReceiptUnreadable("no stream_viewer_id (or payment_id and payment_type)")
    batches = receipt.get("settlements")
    if not isinstance(batches, list) or not all(isinstance(b, dict) for b in batches):
        raise ReceiptUnreadable("no settlements list")
    return receipt


def line_of(receipt: dict[str, Any], amount: Decimal) -> str:
    """The line this receipt's charge must have in a batch of `amount`: a
    viewing session's, or a payment's (a tip, a subscription, a video view)."""
    session = receipt.get("stream_viewer_id")
    if isinstance(session, str):
        return charge_line(session, amount)
    return payment_line(str(receipt["payment_type"]), str(receipt["payment_id"]), amount)


def check_arithmetic(receipt: dict[str, Any], batch: dict[str, Any]) -> list[str]:
    """Offline: the line is this receipt's charge, and it leads to the commitment."""
    where = f"settlement {batch.get('settlement_id')}"
    try:
        amount = Decimal(str(batch.get("amount")))
    except InvalidOperation:
        return [f"{where}: amount {batch.get('amount')!r} is not a decimal"]
    line = batch.get("line")
    if line != line_of(receipt, amount):
        return [f"{where}: line {line!r} is not this receipt's charge of {amount}"]
    remark = batch.get("remark")
    if batch.get("commitment") == MERKLE_V2:
        root = batch.get("root")
        index, count, proof = batch.get("leaf_index"), batch.get("leaf_count"), batch.get("proof")
        if not (isinstance(root, str) and isinstance(index, int) and isinstance(count, int)
                and isinstance(proof, list) and all(isinstance(p, str) for p in proof)):
            return [f"{where}: root, leaf_index, leaf_count or proof missing"]
        if not verify_inclusion(line, index, count, proof, root):
            return [f"{where}: the proof does not lead from the line to root {root}"]
        if remark != merkle_remark_of(root):
            return [f"{where}: remark {remark!r} does not carry root {root}"]
        return []
    if batch.get("commitment") in (DIGEST_V1, None):
        lines, digest = batch.get("lines"), batch.get("digest")
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            return [f"{where}: lines missing"]
        if line not in lines:
            return [f"{where}: the line is not among the batch's lines"]
        if batch_digest(lines) != digest:
            return [f"{where}: the lines do not hash to digest {digest}"]
        if remark != REMARK_PREFIX + str(digest):
            return [f"{where}: remark {remark!r} does not carry digest {digest}"]
        return []
    return [f"{where}: unknown commitment {batch.get('commitment')!r}"]


def check_on_chain(batch: dict[str, Any], chain: OnChainBatch) -> list[str]:
    where = f"settlement {batch.get('settlement_id')}"
    wanted = batch.get("genesis_hash")
    if wanted is not None and wanted != chain.genesis_hash:
        return [f"{where}: the node serves another chain (genesis {chain.genesis_hash})"]
    if not chain.finalized:
        return [f"{where}: block {batch.get('block_hash')} is not the finalized block "
                f"{batch.get('block_number')} of the node's chain"]
    if chain.extrinsic_hash != batch.get("extrinsic_hash"):
        return [f"{where}: the extrinsic at index {batch.get('extrinsic_index')} is "
                f"{chain.extrinsic_hash}, not {batch.get('extrinsic_hash')}"]
    if not chain.is_batch_all:
        return [f"{where}: the extrinsic is not a Utility.batch_all"]
    if not chain.success:
        return [f"{where}: the batch did not succeed on chain"]
    if list(chain.remarks) != [batch.get("remark")]:
        return [f"{where}: the batch's remark on chain is {list(chain.remarks)!r}"]
    return []


def verify(receipt: dict[str, Any], read_chain: ChainReader) -> Verdict:
    verdict = Verdict()
    completed = [b for b in receipt["settlements"] if b.get("status") == "completed"]
    if not completed:
        verdict.problems.append("no completed settlement covers this charge yet")
        return verdict
    for batch in completed:
        problems = check_arithmetic(receipt, batch)
        if not problems:
            problems = check_on_chain(batch, read_chain(batch))
        if problems:
            verdict.problems.extend(problems)
        else:
            verdict.checked.append(str(batch.get("settlement_id")))
    # The receipt's own summary must be the latest completed batch's.
    latest = completed[-1]
    for key in ("line", "remark", "extrinsic_hash", "block_hash", "root", "proof"):
        if key in receipt and receipt[key] != latest.get(key):
            verdict.problems.append(f"the receipt's {key} is not its latest batch's")
    settled = receipt.get("settled")
    try:
        total = sum((Decimal(str(b.get("amount"))) for b in completed), Decimal(0))
        if settled is not None and Decimal(str(settled)) != total:
            verdict.problems.append(f"settled {settled} is not the sum {total} of its batches")
    except InvalidOperation:
        verdict.problems.append("an amount is not a decimal")
    return verdict


def substrate_reader(url: str) -> tuple[ChainReader, Callable[[], None]]:
    """A reader over one websocket to the node (standard RPCs only)."""
    from substrateinterface import SubstrateInterface
    from websocket import WebSocketException

    try:
        api = SubstrateInterface(url=url, ws_options={"timeout": 30})
    except (OSError, WebSocketException) as exc:
        raise ChainUnreachable(f"the chain at {url} does not answer: "
                               f"{type(exc).__name__}") from None

    def read(batch: dict[str, Any]) -> OnChainBatch:
        try:
            return _read_batch(api, batch)
        except (OSError, WebSocketException) as exc:
            raise ChainUnreachable(f"the chain at {url} does not answer: "
                                   f"{type(exc).__name__}") from None

    return read, api.close


def _read_batch(api: Any, batch: dict[str, Any]) -> OnChainBatch:
    genesis = str(api.get_block_hash(0))
    block_hash, number = batch.get("block_hash"), batch.get("block_number")
    index = batch.get("extrinsic_index")
    head = api.get_block_number(api.get_chain_finalised_head())
    finalized = (isinstance(number, int) and isinstance(block_hash, str)
                 and number <= int(head) and api.get_block_hash(number) == block_hash)
    if not finalized or not isinstance(index, int):
        return OnChainBatch(False, None, False, (), False, genesis)
    raw = api.rpc_request("chain_getBlock", [block_hash])["result"]["block"]["extrinsics"]
    if not 0 <= index < len(raw):
        return OnChainBatch(True, None, False, (), False, genesis)
    found = "0x" + hashlib.blake2b(bytes.fromhex(str(raw[index]).removeprefix("0x")),
                                   digest_size=32).hexdigest()
    call = api.get_block(block_hash)["extrinsics"][index].value["call"]
    is_batch = (call["call_module"], call["call_function"]) == ("Utility", "batch_all")
    remarks: list[str] = []
    if is_batch:
        for inner in call["call_args"][0]["value"]:
            if (inner["call_module"], inner["call_function"]) == ("System", "remark"):
                remarks.append(_remark_text(inner["call_args"][0]["value"]))
    success = bool(api.retrieve_extrinsic_by_hash(block_hash, found).is_success)
    return OnChainBatch(True, found, is_batch, tuple(remarks), success, genesis)


def _remark_text(value: Any) -> str:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:]).decode()
        except (ValueError, UnicodeDecodeError):
            return value
    return str(value)
