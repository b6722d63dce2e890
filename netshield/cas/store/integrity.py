"""Whether a CAS state can be trusted: the audit rows, the other rows and the witness (pure).

The backends hand over their rows as stored, untyped (`StateRows`): an adversary who edits the
database may have put anything in them. These functions turn them into audit entries and say,
one sentence per problem, where the policy, issued and revocation rows disagree with the audit
log and where the log disagrees with the monotonic counter that witnessed its head. The store
runs them at open and on demand; they never raise on bad rows and do no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from netshield.cas.auditlog import GENESIS, AuditEntry, canonical_json
from netshield.cas.counter import CounterValue
from netshield.cas.store.model import EV_ALLOW, EV_POLICY, EV_REVOKE, policy_text_hash

Row = tuple[Any, ...]

# The columns each backend returns, in this order, for `StateRows`.
AUDIT_COLUMNS = ("seq", "ts", "event", "data", "prev_hash", "hash")
POLICY_COLUMNS = ("version", "hash", "text")
ISSUED_COLUMNS = (
    *("serial", "service", "platform_id", "measurement", "not_after"),
    *("policy_version", "epoch", "fingerprint"),
)
REVOCATION_COLUMNS = ("seq", "kind", "target", "service", "platform_id")


@dataclass(frozen=True, slots=True)
class StateRows:
    """Every row the integrity checks read, as the database holds them, audit rows by seq."""

    audit: Sequence[Row]
    policies: Sequence[Row] = field(default=())
    issued: Sequence[Row] = field(default=())
    revocations: Sequence[Row] = field(default=())


def load_entries(rows: Sequence[Row]) -> tuple[list[AuditEntry], list[str]]:
    """The audit rows that are entries, in order, and a problem for each row that is not."""
    entries: list[AuditEntry] = []
    problems: list[str] = []
    for seq, ts, event, data, prev_hash, hash_ in rows:
        try:
            parsed = json.loads(data) if isinstance(data, str) else None
            canonical_json(parsed)  # NaN and friends parse but cannot be hashed
        except (ValueError, RecursionError):
            parsed = None
        if not (
            isinstance(seq, int)
            and all(isinstance(v, str) for v in (ts, event, prev_hash, hash_))
            and isinstance(parsed, dict)
        ):
            problems.append(f"audit row {seq} is not an audit entry (edited)")
            continue
        entries.append(AuditEntry(seq, ts, event, parsed, prev_hash, hash_))
    return entries, problems


def rows_problems(rows: StateRows, entries: Sequence[AuditEntry]) -> list[str]:
    """Where the policy, issued and revocation rows disagree with the audit log."""
    return [
        *_policy_problems(rows.policies, entries),
        *_issued_problems(rows.issued, entries),
        *_revocation_problems(rows.revocations, entries),
    ]


def _policy_problems(rows: Sequence[Row], entries: Sequence[AuditEntry]) -> list[str]:
    problems: list[str] = []
    logged = {
        str(e.data.get("version")): (e.seq, e.data.get("hash"))
        for e in entries
        if e.event == EV_POLICY
    }
    for version, hash_, text in rows:
        entry = logged.pop(str(version), None)
        if entry is None:
            problems.append(f"policy version {version} is not in the audit log (inserted)")
        elif entry[1] != hash_ or not isinstance(text, str) or policy_text_hash(text) != hash_:
            problems.append(
                f"policy version {version} does not match audit entry {entry[0]} (edited)"
            )
    problems.extend(
        f"policy version {v} (audit entry {seq}) is missing from the policies table (deleted)"
        for v, (seq, _) in logged.items()
    )
    return problems


def _issued_problems(rows: Sequence[Row], entries: Sequence[AuditEntry]) -> list[str]:
    problems: list[str] = []
    logged = {str(e.data.get("serial")): e for e in entries if e.event == EV_ALLOW}
    for values in rows:
        entry = logged.pop(str(values[0]), None)
        if entry is None:
            problems.append(f"issued certificate {values[0]} is not in the audit log (inserted)")
        elif any(entry.data.get(k) != v for k, v in zip(ISSUED_COLUMNS, values, strict=True)):
            problems.append(
                f"issued certificate {values[0]} does not match audit entry {entry.seq} (edited)"
            )
    problems.extend(
        f"issued certificate {s} (audit entry {e.seq}) is missing from the issued table (deleted)"
        for s, e in logged.items()
    )
    return problems


def _revocation_problems(rows: Sequence[Row], entries: Sequence[AuditEntry]) -> list[str]:
    problems: list[str] = []
    logged = {
        str(e.data.get("revocation_seq")): (e.seq, e.data) for e in entries if e.event == EV_REVOKE
    }
    for seq, kind, target, service, platform_id in rows:
        entry = logged.pop(str(seq), None)
        row = {"kind": kind, "target": target, "service": service, "platform_id": platform_id}
        if entry is None:
            problems.append(f"revocation {seq} is not in the audit log (inserted)")
        elif any(entry[1].get(k) != v for k, v in row.items()):
            problems.append(f"revocation {seq} does not match audit entry {entry[0]} (edited)")
    problems.extend(
        f"revocation {seq} ({data.get('kind')} {data.get('target')}, audit entry {entry_seq}) "
        "is missing from the revocations table (deleted)"
        for seq, (entry_seq, data) in logged.items()
    )
    return problems


def counter_problem(
    location: str,
    counter_path: object,
    entries: Sequence[AuditEntry],
    value: CounterValue,
    *,
    restore: str,
) -> str | None:
    """Why a chain-intact log does not agree with its counter (rollback), or None.

    ``location`` names the database, ``counter_path`` the counter and ``restore`` is the
    backend's advice on what to restore, all for the sentence.
    """
    head_seq = entries[-1].seq if entries else 0
    if head_seq < value.seq:
        return (
            f"{location} is at audit entry {head_seq} but its monotonic counter {counter_path} "
            f"says {value.seq}: the state was rolled back to an older copy (or its newest audit "
            f"entries were deleted); {restore}"
        )
    witnessed = next((e for e in entries if e.seq == value.seq), None)
    head_ok = value.head == GENESIS if value.seq == 0 else witnessed is not None
    if not head_ok or (witnessed is not None and witnessed.hash != value.head):
        return (
            f"audit entry {value.seq} in {location} is not the one its monotonic counter "
            f"{counter_path} recorded: the state was replaced by another copy; {restore}"
        )
    return None
