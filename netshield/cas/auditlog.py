"""The CAS audit log as a hash chain: entry construction and verification (pure, no I/O).

Every state change of the CAS is one `AuditEntry`. Entry ``n`` carries the hash of entry
``n - 1`` (entry 1 carries `GENESIS`) and its own hash over a canonical encoding of
``(seq, ts, event, data, prev_hash)``, so editing, dropping, duplicating, reordering entries,
or swapping the contents of two rows breaks the chain at a place `verify_chain` names in one
sentence. Removing the newest entries
leaves a valid, shorter chain: only an outside witness of the head (the monotonic counter,
passed as ``expected_head``) catches that.

Guarantees: `entry_hash` is a deterministic function of the five fields (key order, whitespace
and non-ASCII text never change it); `make_entry` stores ``data`` exactly as it will read back
from JSON, so an entry survives a JSON round trip with the same hash. The chain is unkeyed: it
proves the log is intact relative to a trusted head, not who wrote it; the checkpoints the CAS
signs over every head (`pki.checkpoint`, checked by `store.integrity`) say that.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

AUDIT_FORMAT = "netshield-audit/1"
GENESIS = "0" * 64

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log. ``data`` is JSON-shaped (dicts, lists, str, int, bool, None)."""

    seq: int
    ts: str
    event: str
    data: Mapping[str, Any] = field(hash=False)
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-able dict (the shape `entry_from_dict` reads back)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "event": self.event,
            "data": dict(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def rfc3339(now: datetime) -> str:
    """``now`` as fixed-width RFC 3339 UTC text with microseconds (sorts like the instants)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    return now.astimezone(UTC).strftime(_TS_FORMAT)


def parse_rfc3339(text: str) -> datetime:
    """Inverse of `rfc3339`; ValueError for any other text."""
    return datetime.strptime(text, _TS_FORMAT).replace(tzinfo=UTC)


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, ASCII only, no NaN: the same value always gives the same text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def entry_hash(seq: int, ts: str, event: str, data: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 (lower-case hex) over the canonical JSON of the format tag and the five fields."""
    body = canonical_json([AUDIT_FORMAT, seq, ts, event, dict(data), prev_hash])
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def make_entry(
    prev: AuditEntry | None, *, event: str, data: Mapping[str, Any], now: datetime
) -> AuditEntry:
    """The entry that follows ``prev`` (or starts the chain when ``prev`` is None).

    ``data`` must be JSON-able with string keys (TypeError/ValueError otherwise); it is copied
    through JSON so the entry holds exactly what a reader of the stored log will see.
    """
    if not event:
        raise ValueError("an audit event needs a name")
    normalized: dict[str, Any] = json.loads(canonical_json(dict(data)))
    seq = 1 if prev is None else prev.seq + 1
    prev_hash = GENESIS if prev is None else prev.hash
    ts = rfc3339(now)
    return AuditEntry(
        seq=seq,
        ts=ts,
        event=event,
        data=normalized,
        prev_hash=prev_hash,
        hash=entry_hash(seq, ts, event, normalized, prev_hash),
    )


def entry_from_dict(obj: object) -> AuditEntry:
    """Parse the `AuditEntry.to_dict` shape (e.g. from the CAS API); ValueError if it is not one.

    The hash is not checked here: that is `verify_chain`'s job, which can say where it broke.
    """
    if not isinstance(obj, dict):
        raise ValueError("an audit entry must be a JSON object")
    expected = {"seq", "ts", "event", "data", "prev_hash", "hash"}
    if set(obj) != expected:
        raise ValueError(f"an audit entry has exactly the keys {sorted(expected)}")
    seq, ts, event, data = obj["seq"], obj["ts"], obj["event"], obj["data"]
    prev_hash, hash_ = obj["prev_hash"], obj["hash"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError("audit entry seq must be a positive integer")
    if not isinstance(ts, str):
        raise ValueError("audit entry ts must be RFC 3339 text")
    parse_rfc3339(ts)
    if not isinstance(event, str) or not event:
        raise ValueError("audit entry event must be a non-empty string")
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError("audit entry data must be a JSON object")
    for name, value in (("prev_hash", prev_hash), ("hash", hash_)):
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise ValueError(f"audit entry {name} must be 64 lower-case hex characters")
    try:
        normalized: dict[str, Any] = json.loads(canonical_json(data))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError("audit entry data is not JSON-shaped") from exc
    return AuditEntry(seq, ts, event, normalized, prev_hash, hash_)


def _missing(first: int, last: int) -> str:
    return f"entry {first} missing" if first == last else f"entries {first}-{last} missing"


def verify_chain(
    entries: Sequence[AuditEntry], *, expected_head: tuple[int, str] | None = None
) -> list[str]:
    """Problems with the chain ``entries`` (the whole log, oldest first); empty if it is intact.

    Each problem is one sentence naming the entry. ``expected_head`` is ``(seq, hash)`` of the
    newest entry an outside witness (the monotonic counter) saw; the log may extend beyond it
    (a crash between commit and counter update) but must contain it.
    """
    problems: list[str] = []
    moved = _moved_contents(entries)
    remaining = Counter(e.seq for e in entries)  # seqs at this position or later
    seen: set[int] = set()
    reported_misplaced: set[int] = set()
    prev: AuditEntry | None = None
    for entry in entries:
        if entry.seq in moved:
            problems.append(
                f"entry {entry.seq} holds the content of entry {moved[entry.seq]} "
                "(rows swapped or moved)"
            )
        elif not _hash_ok(entry):
            problems.append(f"entry {entry.seq}: hash does not match its content (edited)")
        expected_seq = 1 if prev is None else prev.seq + 1
        remaining[entry.seq] -= 1
        if entry.seq in seen:
            problems.append(f"entry {entry.seq} appears twice (duplicated)")
        elif prev is not None and entry.seq < prev.seq:
            if entry.seq not in reported_misplaced:
                problems.append(f"entry {entry.seq} appears after entry {prev.seq} (reordered)")
            seen.add(entry.seq)
            continue  # keep `prev` at the furthest entry so one move is one problem
        elif entry.seq > expected_seq:
            if remaining[expected_seq] > 0:
                problems.append(
                    f"entry {entry.seq} appears before entry {expected_seq} (reordered)"
                )
                reported_misplaced.add(expected_seq)
            elif prev is None:
                problems.append(f"log starts at entry {entry.seq} ({_missing(1, entry.seq - 1)})")
            else:
                problems.append(
                    f"entry {entry.seq} follows entry {prev.seq} "
                    f"({_missing(expected_seq, entry.seq - 1)})"
                )
        elif prev is None and entry.prev_hash != GENESIS and entry.seq not in moved:
            problems.append(f"entry {entry.seq} does not start from the genesis hash (replaced)")
        elif (
            prev is not None
            and entry.prev_hash != prev.hash
            and entry.seq not in moved
            and prev.seq not in moved
        ):
            problems.append(
                f"entry {entry.seq} does not link to entry {prev.seq} (reordered or replaced)"
            )
        seen.add(entry.seq)
        prev = entry
    if expected_head is not None:
        problems.extend(_head_problems(entries, prev, expected_head))
    return problems


def _hash_ok(entry: AuditEntry, seq: int | None = None) -> bool:
    seq = entry.seq if seq is None else seq
    return entry_hash(seq, entry.ts, entry.event, entry.data, entry.prev_hash) == entry.hash


_MAX_MOVED_CANDIDATES = 64


def _moved_contents(entries: Sequence[AuditEntry]) -> dict[int, int]:
    """{seq: true seq} for entries whose content hashes correctly under another damaged seq.

    That is what swapping two rows' contents in a table keyed by seq looks like. Only the first
    damaged entries are tried as candidates, so a wholesale edit stays linear-ish.
    """
    damaged = [e for e in entries if not _hash_ok(e)]
    candidates = [e.seq for e in damaged[:_MAX_MOVED_CANDIDATES]]
    moved: dict[int, int] = {}
    for entry in damaged[:_MAX_MOVED_CANDIDATES]:
        for seq in candidates:
            if seq != entry.seq and _hash_ok(entry, seq):
                moved[entry.seq] = seq
                break
    return moved


def _head_problems(
    entries: Sequence[AuditEntry], last: AuditEntry | None, expected_head: tuple[int, str]
) -> list[str]:
    head_seq, head_hash = expected_head
    last_seq = 0 if last is None else last.seq
    if last_seq < head_seq:
        return [
            f"log ends at entry {last_seq} but the monotonic counter says {head_seq} (truncated)"
        ]
    if head_seq == 0:
        return [] if head_hash == GENESIS else ["the monotonic counter's head is not genesis"]
    matching = [e for e in entries if e.seq == head_seq]
    if matching and all(e.hash != head_hash for e in matching):
        return [
            f"entry {head_seq} is not the entry the monotonic counter recorded "
            "(replaced by another history)"
        ]
    return []
