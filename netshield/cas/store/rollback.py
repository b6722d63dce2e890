"""Whether an opened CAS state may be used: the rollback checks, written once for every backend.

At open (`check_on_open`) and on demand (`verify_backend`), the state's rows, its hash-chained
audit log and the monotonic counter outside the database must agree; the first disagreement
refuses the state with one sentence (`AUDIT_CHAIN_BROKEN` for an edited log or rows, or a
log its CAS did not sign, `STATE_ROLLED_BACK` for a log behind or beside its witness). `refuse_unexpected_layout` and
`mark_state` keep a record outside the database that a location held a state, so that a
deleted database is not silently replaced by a new, empty one. `verify_state` and
`read_audit_offline` read a state without writing anything, for the CLI.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from netshield.cas.auditlog import GENESIS, AuditEntry, verify_chain
from netshield.cas.counter import (
    CounterValue,
    MonotonicCounter,
    default_counter_dir,
    default_counter_path,
)
from netshield.cas.store.backend import Backend
from netshield.cas.store.integrity import (
    CheckpointVerifier,
    checkpoint_problems,
    counter_problem,
    load_entries,
    rows_problems,
    unsigned_history,
)
from netshield.cas.store.model import SCHEMA_VERSION, state_error
from netshield.cas.store.sqlite import SqliteBackend
from netshield.errors import StateError
from netshield.pki.checkpoint import verify_checkpoint
from netshield.reasons import Reason

_MISMATCH_HINT = (
    "The database no longer matches its audit log: rows were edited or deleted. "
    "Restore the newest intact state directory."
)
_REWRITE_HINT = (
    "The audit log was rewritten (or its newest entries written) without the CAS's checkpoint "
    "key. Restore the newest intact state."
)


@dataclass(frozen=True, slots=True)
class CounterCatchUp:
    """What the counter needs after a successful open: witness ``head`` or adopt it."""

    head: AuditEntry | None
    adopt: bool = False


def marker_path(backend: Backend) -> Path:
    """Outside-the-state record that a location had a CAS state (default counter only)."""
    key = hashlib.sha256(backend.marker_key.encode("utf-8")).hexdigest()[:32]
    return default_counter_dir() / f"cas-dir-{key}.state"


def mark_state(backend: Backend, state_id: str) -> None:
    """Record outside the database that ``backend``'s location holds a state (idempotent)."""
    marker = marker_path(backend)
    if not marker.exists():
        marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker.write_text(state_id + "\n")


def refuse_unexpected_layout(backend: Backend, *, default_counter: bool) -> None:
    """StateError unless a database without a CAS state may get a new, empty one."""
    layout = backend.read(lambda tx: tx.layout())
    if layout == "foreign":
        raise state_error(
            f"{backend.location} is not a CAS database (no meta table); {backend.restore_advice}"
        )
    marker = marker_path(backend)
    if layout == "empty" and default_counter and marker.exists():
        raise state_error(
            f"{backend.location} is missing but {marker} records that a CAS state lived "
            f"in {backend.home}: the database was deleted or rolled back to before it "
            f"was created; restore it, or delete {marker} to start a new, empty state "
            "on purpose",
            hint=Reason.STATE_ROLLED_BACK.info.hint,
        )


def check_meta(backend: Backend) -> str:
    """The state id of a CAS database of a schema version this netshield reads."""
    return read_meta(backend)[0]


def read_meta(backend: Backend) -> tuple[str, int]:
    """The state id and schema version of a CAS database this netshield can read or upgrade."""
    meta = backend.read(lambda tx: tx.meta())
    raw_version = meta.get("schema_version")
    version = int(raw_version) if raw_version and raw_version.isdigit() else None
    if version is None or not 1 <= version <= SCHEMA_VERSION:
        raise state_error(
            f"{backend.location} has schema version {raw_version!r} but this netshield reads "
            f"versions 1 to {SCHEMA_VERSION}; run the netshield version that wrote it"
        )
    state_id = meta.get("state_id")
    if not isinstance(state_id, str):
        raise state_error(f"{backend.location} has no state id (edited); {backend.restore_advice}")
    default_counter_path(state_id)  # validates the id's shape
    return state_id, version


def check_on_open(
    backend: Backend,
    counter: MonotonicCounter,
    *,
    created: bool,
    adopt_counter: bool,
    checkpoints: tuple[str, CheckpointVerifier] | None = None,
    adopt_unsigned: bool = False,
) -> CounterCatchUp | None:
    """StateError if the state cannot be trusted; else what the counter still needs, if any.

    With ``checkpoints`` (the state id and how to verify a signed checkpoint), the stored
    checkpoints must agree with the log and the CAS must have signed it (`checkpoint_problems`);
    a log without any checkpoint is refused too unless ``adopt_unsigned`` (`unsigned_history`).
    """
    location, restore = backend.location, backend.restore_advice
    rows = backend.read(lambda tx: tx.state_rows())
    entries, problems = load_entries(rows.audit)
    problems += verify_chain(entries)
    if problems:
        raise StateError(
            f"the audit log in {location} is broken ({problems[0]}); {restore}",
            reason=Reason.AUDIT_CHAIN_BROKEN,
        )
    value = counter.read()
    if value is None and not (created or adopt_counter):
        raise state_error(
            f"{location} holds {len(entries)} audit entries but its monotonic counter "
            f"{counter.path} is missing, so a rollback cannot be ruled out; restore "
            "the counter file, or start with --adopt-counter only if this state "
            "directory is known to be the newest",
            hint="Restore the counter file, or adopt it with --adopt-counter.",
            reason=Reason.STATE_ROLLED_BACK,
        )
    if value is not None:
        problem = counter_problem(location, counter.path, entries, value, restore=restore)
        if problem:
            raise state_error(
                problem, hint=Reason.STATE_ROLLED_BACK.info.hint, reason=Reason.STATE_ROLLED_BACK
            )
    mismatches = rows_problems(rows, entries)
    if mismatches:
        raise StateError(
            f"{location} does not match its audit log ({mismatches[0]}); {restore}",
            reason=Reason.AUDIT_CHAIN_BROKEN,
            hint=_MISMATCH_HINT,
        )
    if checkpoints is not None:
        forged = checkpoint_problems(rows.checkpoints, entries, *checkpoints)
        if forged:
            raise StateError(
                f"the audit log in {location} is not the one its CAS signed ({forged[0]}); "
                f"{restore}",
                reason=Reason.AUDIT_CHAIN_BROKEN,
                hint=_REWRITE_HINT,
            )
        unsigned = None if adopt_unsigned else unsigned_history(rows.checkpoints, entries)
        if unsigned:
            raise StateError(
                f"{location}: {unsigned}",
                reason=Reason.AUDIT_CHAIN_BROKEN,
                hint="Restore the newest state, or adopt it with --adopt-unsigned-history.",
            )
    head = entries[-1] if entries else None
    if value is None and (created or head is None):
        return CounterCatchUp(head)
    if value is None:
        return CounterCatchUp(head, adopt=True)
    if head is not None and head.seq > value.seq:
        return CounterCatchUp(head)  # the previous run committed but crashed before the counter
    return None


def snapshot_audit(
    backend: Backend,
    counter: MonotonicCounter,
    since: int = 0,
    limit: int | None = None,
    *,
    checkpoints: tuple[str, CheckpointVerifier] | None = None,
) -> tuple[list[AuditEntry], CounterValue, list[str]]:
    """Entries after ``since`` (at most ``limit``), the head and every problem, at one moment.

    Problems: rows that are not entries, a broken chain, rows that disagree with the log, a
    log behind or beside ``counter``, and (with ``checkpoints``, as `check_on_open`) a log the
    CAS did not sign. The counter is read before the rows' snapshot, so entries witnessed by a
    concurrent writer are always in it.
    """
    counter_problems: list[str] = []
    try:
        value = counter.read()
    except StateError as exc:
        counter_problems.append(str(exc))
        value = None
    else:
        if value is None:
            counter_problems.append(f"the monotonic counter {counter.path} is missing")
    selected, head, rows = backend.read(
        lambda tx: (tx.audit_entries(since, limit), tx.audit_head(), tx.state_rows())
    )
    entries, problems = load_entries(rows.audit)
    problems += counter_problems
    expected = None if value is None else (value.seq, value.head)
    problems += verify_chain(entries, expected_head=expected)
    problems += rows_problems(rows, entries)
    if checkpoints is not None:
        problems += checkpoint_problems(rows.checkpoints, entries, *checkpoints)
        unsigned = unsigned_history(rows.checkpoints, entries)
        problems += [] if unsigned is None else [unsigned]
    return selected, CounterValue(*head) if head else CounterValue(0, GENESIS), problems


def verify_backend(
    backend: Backend,
    counter: MonotonicCounter,
    *,
    checkpoints: tuple[str, CheckpointVerifier] | None = None,
) -> list[str]:
    """Every problem with the log in ``backend``, with its rows, with ``counter`` and (with
    ``checkpoints``) with what its CAS signed."""
    return snapshot_audit(backend, counter, 0, 0, checkpoints=checkpoints)[2]


def open_read_only(
    state_dir: Path, *, database: str | None = None, password: str | None = None
) -> Backend:
    """The state's database for reading only: SQLite in ``state_dir``, or the PostgreSQL URL.

    StateError naming the database if it holds no CAS state.
    """
    if database is None:
        return SqliteBackend.open_read_only(state_dir)
    from netshield.cas.store.postgres import PostgresBackend

    backend = PostgresBackend.open(database, password=password, pool_size=1)
    try:
        if backend.read(lambda tx: tx.layout()) != "cas":
            raise state_error(f"{backend.location} holds no CAS state")
    except BaseException:
        backend.close()
        raise
    return backend


def verify_state(
    state_dir: Path,
    counter_path: Path | None = None,
    *,
    database: str | None = None,
    password: str | None = None,
    bundle: list[x509.Certificate] | None = None,
) -> list[str]:
    """Problems with the state (empty if intact), for the CLI's offline check.

    With ``bundle`` (the mesh CA certificates) the signed checkpoints are checked too, and a
    log its CAS did not sign is a problem. Reads the database only and never writes anything:
    no lock, no counter update.
    """
    try:
        backend = open_read_only(state_dir, database=database, password=password)
        try:
            state_id, _version = read_meta(backend)
            path = counter_path if counter_path is not None else default_counter_path(state_id)
            signed = None if bundle is None else (state_id, checkpoint_verifier(bundle))
            return verify_backend(backend, MonotonicCounter(path), checkpoints=signed)
        finally:
            backend.close()
    except StateError as exc:
        return [str(exc)]


def checkpoint_verifier(bundle: list[x509.Certificate]) -> CheckpointVerifier:
    """Verify a checkpoint against ``bundle`` (any trust domain: the bundle names it)."""
    return lambda signed: verify_checkpoint(signed, bundle)


def read_audit_offline(
    state_dir: Path,
    counter: MonotonicCounter | None = None,
    *,
    database: str | None = None,
    password: str | None = None,
) -> tuple[list[AuditEntry], CounterValue | None, Path]:
    """The whole audit log, the counter's value (None if missing) and the counter's path.

    Read-only like `verify_state` (no lock, no writes); StateError naming the database if it
    or the counter cannot be read. Rows that are not entries at all are skipped here;
    `verify_state` reports them.
    """
    backend = open_read_only(state_dir, database=database, password=password)
    try:
        state_id, _version = read_meta(backend)
        entries, _problems = load_entries(backend.read(lambda tx: tx.state_rows()).audit)
    finally:
        backend.close()
    if counter is None:
        counter = MonotonicCounter(default_counter_path(state_id))
    return entries, counter.read(), counter.path
