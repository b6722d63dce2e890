"""The connection log's hash chain: how a record line carries the hash of the line before it.

A chained line is the record's JSON (`ConnectionRecord.to_dict`) with one more key,
``"chain": {"seq": N, "prev": "<64 hex>"}``: `seq` counts records along the chain (0, 1, 2, ...
across rotated files and restarts) and `prev` is the SHA-256 of the previous line's exact bytes
(without its newline), or `GENESIS` for the first line of a chain. Editing, deleting or
reordering a line changes what the next line should carry, so `netshield logs --verify` sees it.

Pure: bytes in, bytes out. Guarantees: `chained_line` is deterministic (sorted keys, ASCII), so
the hash of a line is the hash of what is in the file; `link_of` never raises, whatever the line.
Readers that do not know the chain ignore the key (`ConnectionRecord.from_dict` skips unknown
keys), so the record schema stays 1.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from netshield.record import ConnectionRecord

CHAIN_KEY = "chain"
GENESIS = "0" * 64
"""`prev` of the first line of a chain (no line before it)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Link:
    """A line's place in the chain."""

    seq: int
    prev: str  # 64 lower-case hex characters


def line_hash(line: bytes) -> str:
    """SHA-256 (hex) of a line's bytes, without its trailing newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def chained_line(record: ConnectionRecord, link: Link) -> bytes:
    """The record as one chained line, newline included."""
    data: dict[str, Any] = record.to_dict()
    data[CHAIN_KEY] = {"seq": link.seq, "prev": link.prev}
    text = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return (text + "\n").encode("ascii")


def link_from(data: object) -> Link | None:
    """The chain link of a parsed line, or None if it carries no well-formed one."""
    if not isinstance(data, dict):
        return None
    chain = data.get(CHAIN_KEY)
    if not isinstance(chain, dict):
        return None
    seq, prev = chain.get("seq"), chain.get("prev")
    if type(seq) is not int or seq < 0 or not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        return None
    return Link(seq, prev)


def link_of(line: bytes) -> Link | None:
    """The chain link of a raw line, or None (not JSON, not chained, or malformed)."""
    try:
        return link_from(json.loads(line))
    except (ValueError, RecursionError):
        return None


def next_link(previous_line: bytes | None, previous_link: Link | None) -> Link:
    """The link for the line written after `previous_line` (None: the chain starts here).

    `previous_link` is the link of the last chained line at or before `previous_line` (None if
    there is none): the sequence continues from it.
    """
    if previous_line is None:
        return Link(0, GENESIS)
    seq = previous_link.seq + 1 if previous_link is not None else 0
    return Link(seq, line_hash(previous_line))


__all__ = [
    "CHAIN_KEY",
    "GENESIS",
    "Link",
    "chained_line",
    "line_hash",
    "link_from",
    "link_of",
    "next_link",
]
