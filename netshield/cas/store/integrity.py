"""Whether a CAS state can be trusted: the audit rows, the other rows and the witness (pure).

The backends hand over their rows as stored, untyped (`StateRows`): an adversary who edits the
database may have put anything in them. These functions turn them into audit entries and say,
one sentence per problem, where the policy, issued and revocation rows disagree with the audit
log, where the log disagrees with the monotonic counter that witnessed its head, and where it
disagrees with the checkpoints the CAS signed. The store runs them at open and on demand; they
never raise on bad rows and do no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from netshield.cas.auditlog import GENESIS, AuditEntry, canonical_json
from netshield.cas.counter import CounterValue
from netshield.cas.store.model import (
    EV_ALLOW,
    EV_CREATE,
    EV_POLICY,
    EV_REVOKE,
    MAINTENANCE_EVENTS,
    policy_text_hash,
)
from netshield.pki.checkpoint import Checkpoint, CheckpointError, SignedCheckpoint

CheckpointVerifier = Callable[[SignedCheckpoint], Checkpoint]

Row = tuple[Any, ...]

# The columns each backend returns, in this order, for `StateRows`.
AUDIT_COLUMNS = ("seq", "ts", "event", "data", "prev_hash", "hash")
POLICY_COLUMNS = ("version", "hash", "text")
ISSUED_COLUMNS = (
    *("serial", "service", "platform_id", "measurement", "not_after"),
    *("policy_version", "epoch", "fingerprint"),
)
REVOCATION_COLUMNS = ("seq", "kind", "target", "service", "platform_id")
CHECKPOINT_COLUMNS = ("seq", "body", "signer_pem")


@dataclass(frozen=True, slots=True)
class StateRows:
    """Every row the integrity checks read, as the database holds them, audit rows by seq."""

    audit: Sequence[Row]
    policies: Sequence[Row] = field(default=())
    issued: Sequence[Row] = field(default=())
    revocations: Sequence[Row] = field(default=())
    checkpoints: Sequence[Row] = field(default=())


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


def checkpoint_problems(
    rows: Sequence[Row], entries: Sequence[AuditEntry], state_id: str, verify: CheckpointVerifier
) -> list[str]:
    """Where the signed checkpoints disagree with the audit log, and whether the CAS signed it.

    Every stored checkpoint must state the entry at its seq (hash, time, policy version in
    force, state id); the newest one must verify (``verify``), which vouches, through the hash
    chain, for every entry before it; after it come only maintenance entries (`cas migrate`).
    So a chain rewritten together with its counter, or truncated below checkpoints it leaves
    behind, is caught without the CAS's key. A log with no checkpoint at all is
    `unsigned_history`'s case, not reported here.
    """
    by_seq = {e.seq: e for e in entries}
    version, versions = 0, {}
    for e in entries:
        if e.event == EV_POLICY and isinstance(e.data.get("version"), int):
            version = e.data["version"]
        versions[e.seq] = version
    problems: list[str] = []
    newest: SignedCheckpoint | None = None
    for seq, body, pem in rows:
        try:
            signed = SignedCheckpoint.from_body(body, pem)
        except CheckpointError as err:
            problems.append(f"checkpoint {seq} is not a signed checkpoint ({err}; edited)")
            continue
        c, entry = signed.checkpoint, by_seq.get(seq)
        if c.seq != seq:
            problems.append(f"checkpoint {seq} holds the checkpoint of entry {c.seq} (moved)")
        elif entry is None:
            problems.append(
                f"checkpoint {seq} vouches for audit entry {seq}, which the log no longer holds "
                "(its newest entries were deleted)"
            )
        elif (c.head, c.ts, c.state_id, c.policy_version) != (
            entry.hash,
            entry.ts,
            state_id,
            versions[seq],
        ):
            problems.append(
                f"audit entry {seq} is not the entry the CAS signed in its checkpoint "
                "(the chain was rewritten)"
            )
        elif newest is None or seq > newest.checkpoint.seq:
            newest = signed
    if not rows:
        return problems
    if newest is not None:
        try:
            verify(newest)
        except CheckpointError as err:
            problems.append(str(err))
    after = _unsigned(entries, 0 if newest is None else newest.checkpoint.seq)
    if after:
        problems.append(
            f"audit {_span(after)} no signed checkpoint: written without the CAS's checkpoint "
            "key (the chain or its checkpoints were rewritten)"
        )
    return problems


def unsigned_history(rows: Sequence[Row], entries: Sequence[AuditEntry]) -> str | None:
    """Why a log that carries no checkpoint at all (written before the CAS signed checkpoints,
    or by a netshield without them) cannot be trusted as it is, or None (nothing to vouch
    for: only maintenance entries, e.g. a state `cas migrate` created)."""
    after = [] if rows else _unsigned(entries, 0)
    if not after:
        return None
    return (
        f"audit {_span(after)} no signed checkpoint: the state was written before the CAS signed "
        "its checkpoints (or its checkpoints were deleted); if it is known to be the newest, "
        "start the CAS once with --adopt-unsigned-history to sign its head"
    )


def _unsigned(entries: Sequence[AuditEntry], after: int) -> list[int]:
    return [e.seq for e in entries if e.seq > after and e.event not in MAINTENANCE_EVENTS]


def _span(seqs: list[int]) -> str:
    if len(seqs) == 1:
        return f"entry {seqs[0]} has"
    return f"entries {seqs[0]}-{seqs[-1]} have"


def witnessed_problems(entries: Sequence[AuditEntry], seen: Checkpoint, who: str) -> list[str]:
    """Where the log ``entries`` disagrees with a checkpoint an outside witness remembers (a
    sidecar's witness file, named ``who``): a log of another state, a log that ends before it
    (restored together with its counter) or one with another entry in its place (replaced)."""
    first = entries[0] if entries else None
    state_id = (
        first.data.get("state_id") if first is not None and first.event == EV_CREATE else None
    )
    if state_id is not None and state_id != seen.state_id:
        return [f"{who} saw state {seen.state_id}, but this log is of state {state_id} (replaced)"]
    last = entries[-1].seq if entries else 0
    if last < seen.seq:
        return [
            f"log ends at entry {last} but {who} saw entry {seen.seq} signed by the CAS "
            "(rolled back, together with its counter)"
        ]
    if any(e.seq == seen.seq and e.hash != seen.head for e in entries):
        return [
            f"entry {seen.seq} is not the entry {who} saw signed by the CAS "
            "(replaced by another history)"
        ]
    return []
