"""The CAS state store: policy versions, nonces, issued serials, revocations and the audit log.

One SQLite file, ``<state_dir>/cas.db`` (WAL, ``synchronous=FULL``). Every mutating call writes
its rows and exactly one audit entry in one ``BEGIN IMMEDIATE`` transaction, commits, and then
advances the monotonic counter (kept outside the state directory) to the new audit head.

Guarantees (AM7.1, disk rollback):
- `CasStore.open` fails closed, with one sentence naming the files and the fix, when the audit
  chain is broken, when the rows no longer match the audit log, when the log is behind its
  monotonic counter or diverges from it (an older or another copy was restored), when the
  counter is missing for a non-empty database (unless ``adopt_counter``), and, with the default
  counter location, when the database of a state directory that had one was deleted.
- A crash between commit and counter update leaves the log one step ahead; the next open
  checks that the log still contains the counter's head and then catches the counter up.
- Nonces are not audited (they are the hot path); a restored copy that would revive a used
  nonce is still caught, because every consumed nonce is followed by an audited decision.
- No key material is stored: nonces are kept as SHA-256 digests; certificates only by serial,
  fingerprint and claims.

Concurrency: one connection opened with ``check_same_thread=False``; every public method holds
one re-entrant lock for its whole duration (transaction and counter write included), so the
asyncio thread and worker threads may call it concurrently and see serialized effects. One
process per state directory: `open` takes an exclusive ``flock`` on ``<state_dir>/cas.lock``.
Mutating calls fsync twice (database, counter); call them from a worker thread if that matters.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from netshield.cas.auditlog import (
    GENESIS,
    AuditEntry,
    canonical_json,
    make_entry,
    parse_rfc3339,
    rfc3339,
    verify_chain,
)
from netshield.cas.counter import (
    CounterValue,
    MonotonicCounter,
    default_counter_dir,
    default_counter_path,
)
from netshield.errors import NetshieldError, StateError
from netshield.identity import name_problem
from netshield.nonces import NonceStatus
from netshield.reasons import Reason

DB_NAME = "cas.db"
LOCK_NAME = "cas.lock"
SCHEMA_VERSION = 1
NONCE_BYTES = 32

RevocationKind = Literal["instance", "service", "platform"]
REVOCATION_KINDS: tuple[RevocationKind, ...] = ("instance", "service", "platform")

# Events the store writes itself; `CasStore.audit` refuses them so the rows <-> log check holds.
EV_CREATE = "state.create"
EV_ADOPT = "state.adopt_counter"
EV_POLICY = "policy.apply"
EV_ALLOW = "attest.allow"
EV_DENY = "attest.deny"
EV_REVOKE = "revoke"
_RESERVED_EVENTS = frozenset({EV_CREATE, EV_ADOPT, EV_POLICY, EV_ALLOW, EV_DENY, EV_REVOKE})

_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
_NONCE_KEEP = timedelta(hours=1)  # rows stay this long past expiry, then are pruned
_RESTORE = "restore the newest copy of the state directory and never start the CAS on an old one"
_UNAVAILABLE_HINT = "The CAS state cannot be opened; fix the named file or directory and retry."
_MISMATCH_HINT = (
    "The database no longer matches its audit log: rows were edited or deleted. "
    "Restore the newest intact state directory."
)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nonces (digest TEXT PRIMARY KEY, expires_at TEXT NOT NULL, used_at TEXT);
CREATE INDEX nonces_expiry ON nonces (expires_at);
CREATE TABLE policies (
    version INTEGER PRIMARY KEY, hash TEXT NOT NULL, text TEXT NOT NULL,
    applied_at TEXT NOT NULL, actor TEXT NOT NULL, previous_hash TEXT);
CREATE TABLE issued (
    serial TEXT PRIMARY KEY, service TEXT NOT NULL, platform_id TEXT NOT NULL,
    measurement TEXT NOT NULL, not_after TEXT NOT NULL, policy_version INTEGER NOT NULL,
    epoch INTEGER NOT NULL, issued_at TEXT NOT NULL, fingerprint TEXT NOT NULL);
CREATE INDEX issued_service ON issued (service);
CREATE TABLE revocations (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, ts TEXT NOT NULL,
    actor TEXT NOT NULL, note TEXT NOT NULL, service TEXT, platform_id TEXT,
    UNIQUE (kind, target));
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """One applied policy version. ``hash`` is ``"sha256:" + hex`` of the UTF-8 text."""

    version: int
    hash: str
    text: str
    applied_at: str
    actor: str = ""
    previous_hash: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate the CAS issued (no key material: serial, fingerprint and claims)."""

    serial: int
    service: str
    platform_id: str
    measurement: str
    not_after: datetime
    policy_version: int
    epoch: int
    issued_at: str
    fingerprint: str

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.serial)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the revocation feed; ``seq`` is its position (1, 2, ...)."""

    seq: int
    kind: RevocationKind
    target: str
    ts: str
    service: str | None
    platform_id: str | None
    actor: str = ""
    note: str = ""


def serial_hex(serial: int) -> str:
    """The stored form of a certificate serial: lower-case hex, no prefix, no leading zeros."""
    if serial < 0:
        raise ValueError("certificate serials are non-negative")
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """A serial typed by an operator: hex, optionally ``0x``-prefixed or ``:``-separated."""
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or not re.fullmatch(r"[0-9a-f]{1,64}", cleaned):
        raise NetshieldError(
            f"{text!r} is not a certificate serial (expected hex, e.g. 5f3a9c0d12e4b7a1)",
            reason=Reason.REVOCATION_TARGET_UNKNOWN,
        )
    return int(cleaned, 16)


def policy_text_hash(text: str) -> str:
    """``"sha256:" + hex`` of the UTF-8 text (the same value as `netshield.policy.policy_hash`)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _nonce_digest(nonce: bytes) -> str:
    return hashlib.sha256(nonce).hexdigest()


def _state_error(
    message: str, *, hint: str = _UNAVAILABLE_HINT, reason: Reason = Reason.STATE_UNAVAILABLE
) -> StateError:
    return StateError(message, reason=reason, hint=hint)


def _marker_path(state_dir: Path) -> Path:
    """Outside-the-state record that a state directory had a database (default counter only)."""
    key = hashlib.sha256(str(state_dir.resolve()).encode("utf-8")).hexdigest()[:32]
    return default_counter_dir() / f"cas-dir-{key}.state"


def _connect(db_path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        # Without a WAL file the database file is complete: open it immutable so SQLite creates
        # no -wal/-shm files. With one (a running or crashed CAS), read it through the WAL.
        wal = db_path.with_name(db_path.name + "-wal")
        mode = "mode=ro" if wal.exists() else "immutable=1"
        uri = f"file:{urllib.parse.quote(str(db_path))}?{mode}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
    else:
        conn = sqlite3.connect(
            str(db_path), isolation_level=None, check_same_thread=False, timeout=5.0
        )
    try:
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _load_entries(conn: sqlite3.Connection) -> tuple[list[AuditEntry], list[str]]:
    """All audit rows in storage order, and a problem for each row that is not an entry at all."""
    entries: list[AuditEntry] = []
    problems: list[str] = []
    rows = conn.execute(f"{_AUDIT_SELECT} ORDER BY seq").fetchall()
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


def _rows_problems(conn: sqlite3.Connection, entries: list[AuditEntry]) -> list[str]:
    """Where the policy, issued and revocation rows disagree with the audit log."""
    problems: list[str] = []
    logged_policies = {
        str(e.data.get("version")): (e.seq, e.data.get("hash"))
        for e in entries
        if e.event == EV_POLICY
    }
    for version, hash_, text in conn.execute("SELECT version, hash, text FROM policies"):
        logged = logged_policies.pop(str(version), None)
        if logged is None:
            problems.append(f"policy version {version} is not in the audit log (inserted)")
        elif logged[1] != hash_ or not isinstance(text, str) or policy_text_hash(text) != hash_:
            problems.append(
                f"policy version {version} does not match audit entry {logged[0]} (edited)"
            )
    problems.extend(
        f"policy version {v} (audit entry {seq}) is missing from the policies table (deleted)"
        for v, (seq, _) in logged_policies.items()
    )
    logged_serials = {str(e.data.get("serial")): e for e in entries if e.event == EV_ALLOW}
    columns = (
        *("serial", "service", "platform_id", "measurement", "not_after"),
        *("policy_version", "epoch", "fingerprint"),
    )
    for values in conn.execute(
        "SELECT serial, service, platform_id, measurement, not_after, policy_version, epoch, "
        "fingerprint FROM issued"
    ):
        logged_cert = logged_serials.pop(str(values[0]), None)
        if logged_cert is None:
            problems.append(f"issued certificate {values[0]} is not in the audit log (inserted)")
        elif any(logged_cert.data.get(k) != v for k, v in zip(columns, values, strict=True)):
            problems.append(
                f"issued certificate {values[0]} does not match audit entry {logged_cert.seq} "
                "(edited)"
            )
    problems.extend(
        f"issued certificate {s} (audit entry {e.seq}) is missing from the issued table (deleted)"
        for s, e in logged_serials.items()
    )
    logged_revocations = {
        str(e.data.get("revocation_seq")): (e.seq, e.data) for e in entries if e.event == EV_REVOKE
    }
    for seq, kind, target, service, platform_id in conn.execute(
        "SELECT seq, kind, target, service, platform_id FROM revocations"
    ):
        logged_rev = logged_revocations.pop(str(seq), None)
        row = {"kind": kind, "target": target, "service": service, "platform_id": platform_id}
        if logged_rev is None:
            problems.append(f"revocation {seq} is not in the audit log (inserted)")
        elif any(logged_rev[1].get(k) != v for k, v in row.items()):
            problems.append(f"revocation {seq} does not match audit entry {logged_rev[0]} (edited)")
    problems.extend(
        f"revocation {seq} ({data.get('kind')} {data.get('target')}, audit entry {entry_seq}) "
        "is missing from the revocations table (deleted)"
        for seq, (entry_seq, data) in logged_revocations.items()
    )
    return problems


def _counter_problem(
    db_path: Path, counter_path: Path, entries: list[AuditEntry], value: CounterValue
) -> str | None:
    """Why a chain-intact log does not agree with its counter (rollback), or None."""
    head_seq = entries[-1].seq if entries else 0
    if head_seq < value.seq:
        return (
            f"{db_path} is at audit entry {head_seq} but its monotonic counter {counter_path} "
            f"says {value.seq}: the state was rolled back to an older copy (or its newest audit "
            f"entries were deleted); {_RESTORE}"
        )
    witnessed = next((e for e in entries if e.seq == value.seq), None)
    head_ok = value.head == GENESIS if value.seq == 0 else witnessed is not None
    if not head_ok or (witnessed is not None and witnessed.hash != value.head):
        return (
            f"audit entry {value.seq} in {db_path} is not the one its monotonic counter "
            f"{counter_path} recorded: the state was replaced by another copy; {_RESTORE}"
        )
    return None


class CasStore:
    """The CAS state. Create with `CasStore.open`; all methods are synchronous and thread-safe."""

    def __init__(
        self,
        *,
        state_dir: Path,
        conn: sqlite3.Connection,
        counter: MonotonicCounter,
        state_id: str,
        lock_fd: int,
    ) -> None:
        self.state_dir = state_dir
        self.state_id = state_id
        self._conn: sqlite3.Connection | None = conn
        self._counter = counter
        self._lock_fd = lock_fd
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"CasStore({str(self.state_dir)!r}, state_id={self.state_id!r})"

    @property
    def counter_path(self) -> Path:
        return self._counter.path

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        counter: MonotonicCounter | None = None,
        adopt_counter: bool = False,
        now: datetime | None = None,
    ) -> CasStore:
        """Open (or create) the state in ``state_dir``; StateError if it cannot be trusted.

        ``now`` stamps the audit entries open may write (creation, counter adoption); it
        defaults to the clock, since opening is I/O anyway.
        """
        when = now if now is not None else datetime.now(UTC)
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _state_error(
                f"cannot use the state directory {state_dir}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise _state_error(
                f"{state_dir / LOCK_NAME} is locked: another CAS is using {state_dir}; "
                "stop it first (one CAS per state directory)"
            ) from None
        try:
            return cls._open_locked(
                state_dir=state_dir,
                lock_fd=lock_fd,
                counter=counter,
                adopt_counter=adopt_counter,
                now=when,
            )
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(
        cls,
        *,
        state_dir: Path,
        lock_fd: int,
        counter: MonotonicCounter | None,
        adopt_counter: bool,
        now: datetime,
    ) -> CasStore:
        db_path = state_dir / DB_NAME
        try:
            conn = _connect(db_path)
        except sqlite3.Error as exc:
            raise _state_error(
                f"{db_path} is not a readable CAS database ({exc}); {_RESTORE}"
            ) from None
        try:
            store = cls._open_db(
                state_dir=state_dir,
                db_path=db_path,
                conn=conn,
                lock_fd=lock_fd,
                counter=counter,
                adopt_counter=adopt_counter,
                now=now,
            )
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def _open_db(
        cls,
        *,
        state_dir: Path,
        db_path: Path,
        conn: sqlite3.Connection,
        lock_fd: int,
        counter: MonotonicCounter | None,
        adopt_counter: bool,
        now: datetime,
    ) -> CasStore:
        tables = _tables(conn)
        created = False
        if "meta" not in tables:
            if tables:
                raise _state_error(f"{db_path} is not a CAS database (no meta table); {_RESTORE}")
            marker = _marker_path(state_dir)
            if counter is None and marker.exists():
                raise _state_error(
                    f"{db_path} is missing but {marker} records that a CAS state lived in "
                    f"{state_dir}: the database was deleted or rolled back to before it was "
                    f"created; restore it, or delete {marker} to start a new, empty state on "
                    "purpose",
                    hint=Reason.STATE_ROLLED_BACK.info.hint,
                )
            cls._create(conn, state_id=str(uuid.uuid4()), now=now)
            created = True
        state_id = cls._check_meta(conn, db_path)
        if counter is None:
            counter = MonotonicCounter(default_counter_path(state_id))
        store = cls(
            state_dir=state_dir, conn=conn, counter=counter, state_id=state_id, lock_fd=lock_fd
        )
        store._check_on_open(db_path, created=created, adopt_counter=adopt_counter, now=now)
        if counter.path == default_counter_path(state_id):
            marker = _marker_path(state_dir)
            if not marker.exists():
                marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                marker.write_text(state_id + "\n")
        return store

    @staticmethod
    def _create(conn: sqlite3.Connection, *, state_id: str, now: datetime) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("state_id", state_id), ("schema_version", str(SCHEMA_VERSION))],
            )
            entry = make_entry(
                None,
                event=EV_CREATE,
                data={"state_id": state_id, "schema_version": SCHEMA_VERSION},
                now=now,
            )
            _insert_entry(conn, entry)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _check_meta(conn: sqlite3.Connection, db_path: Path) -> str:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise _state_error(
                f"{db_path} has schema version {version!r} but this netshield reads version "
                f"{SCHEMA_VERSION}; run the netshield version that wrote it"
            )
        state_id = meta.get("state_id")
        if not isinstance(state_id, str):
            raise _state_error(f"{db_path} has no state id (edited); {_RESTORE}")
        default_counter_path(state_id)  # validates the id's shape
        return state_id

    def _check_on_open(
        self, db_path: Path, *, created: bool, adopt_counter: bool, now: datetime
    ) -> None:
        conn = self._require_conn()
        entries, problems = _load_entries(conn)
        problems += verify_chain(entries)
        if problems:
            raise StateError(
                f"the audit log in {db_path} is broken ({problems[0]}); {_RESTORE}",
                reason=Reason.AUDIT_CHAIN_BROKEN,
            )
        value = self._counter.read()
        if value is None and not (created or adopt_counter):
            raise _state_error(
                f"{db_path} holds {len(entries)} audit entries but its monotonic counter "
                f"{self.counter_path} is missing, so a rollback cannot be ruled out; restore "
                "the counter file, or start with --adopt-counter only if this state "
                "directory is known to be the newest",
                hint="Restore the counter file, or adopt it with --adopt-counter.",
                reason=Reason.STATE_ROLLED_BACK,
            )
        if value is not None:
            problem = _counter_problem(db_path, self.counter_path, entries, value)
            if problem:
                raise _state_error(
                    problem,
                    hint=Reason.STATE_ROLLED_BACK.info.hint,
                    reason=Reason.STATE_ROLLED_BACK,
                )
        mismatches = _rows_problems(conn, entries)
        if mismatches:
            raise StateError(
                f"{db_path} does not match its audit log ({mismatches[0]}); {_RESTORE}",
                reason=Reason.AUDIT_CHAIN_BROKEN,
                hint=_MISMATCH_HINT,
            )
        head = entries[-1] if entries else None
        if value is None and (created or head is None):
            self._witness(head)
        elif value is None and head is not None:
            data = {"counter": str(self.counter_path), "seq": head.seq}
            self._append_audited(EV_ADOPT, data, now=now)
        elif value is not None and head is not None and head.seq > value.seq:
            self._witness(head)  # the previous run committed but crashed before the counter

    def close(self) -> None:
        """Close the database and release the state directory; idempotent."""
        with self._lock:
            if self._conn is None:
                return
            self._conn.close()
            self._conn = None
            with suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._require_conn().execute(sql, params).fetchall()

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the CAS store is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._require_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _append(
        self, conn: sqlite3.Connection, event: str, data: Mapping[str, Any], now: datetime
    ) -> AuditEntry:
        """Append one entry inside the caller's transaction."""
        row = conn.execute(f"{_AUDIT_SELECT} ORDER BY seq DESC LIMIT 1").fetchone()
        prev = None if row is None else _entry_of(row)
        entry = make_entry(prev, event=event, data=data, now=now)
        _insert_entry(conn, entry)
        return entry

    def _witness(self, entry: AuditEntry | None) -> None:
        value = CounterValue(0, GENESIS) if entry is None else CounterValue(entry.seq, entry.hash)
        self._counter.advance(value)

    def _append_audited(self, event: str, data: Mapping[str, Any], *, now: datetime) -> AuditEntry:
        with self._lock:
            with self._transaction() as conn:
                entry = self._append(conn, event, data, now)
            self._witness(entry)
            return entry

    # ------------------------------------------------------------------ nonces

    def issue_nonce(self, *, now: datetime, ttl: timedelta) -> bytes:
        """A fresh single-use nonce valid until ``now + ttl`` (stored as its SHA-256 only)."""
        if ttl <= timedelta(0):
            raise ValueError("a nonce needs a positive lifetime")
        nonce = secrets.token_bytes(NONCE_BYTES)
        with self._lock, self._transaction() as conn:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (rfc3339(now - _NONCE_KEEP),))
            conn.execute(
                "INSERT INTO nonces (digest, expires_at) VALUES (?, ?)",
                (_nonce_digest(nonce), rfc3339(now + ttl)),
            )
        return nonce

    def consume_nonce(self, nonce: bytes, *, now: datetime) -> NonceStatus:
        """Use ``nonce`` once: VALID the first time, then REUSED; EXPIRED or UNKNOWN otherwise."""
        if len(nonce) != NONCE_BYTES:
            return NonceStatus.UNKNOWN
        stamp = rfc3339(now)
        with self._lock, self._transaction() as conn:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (rfc3339(now - _NONCE_KEEP),))
            digest = _nonce_digest(nonce)
            row = conn.execute(
                "SELECT expires_at, used_at FROM nonces WHERE digest = ?", (digest,)
            ).fetchone()
            if row is None:
                return NonceStatus.UNKNOWN
            expires_at, used_at = row
            if used_at is not None:
                return NonceStatus.REUSED
            if stamp >= expires_at:
                return NonceStatus.EXPIRED
            cursor = conn.execute(
                "UPDATE nonces SET used_at = ? WHERE digest = ? AND used_at IS NULL",
                (stamp, digest),
            )
            return NonceStatus.VALID if cursor.rowcount == 1 else NonceStatus.REUSED

    # ------------------------------------------------------------------ policy

    def current_policy(self) -> StoredPolicy | None:
        rows = self._rows(f"{_POLICY_SELECT} ORDER BY version DESC LIMIT 1")
        return StoredPolicy(*rows[0]) if rows else None

    def policy_version(self, version: int) -> StoredPolicy | None:
        rows = self._rows(f"{_POLICY_SELECT} WHERE version = ?", (version,))
        return StoredPolicy(*rows[0]) if rows else None

    def apply_policy(
        self, text: str, *, previous_hash: str | None, now: datetime, actor: str
    ) -> StoredPolicy:
        """Store ``text`` (already validated) as the next version, if it names the current one.

        NetshieldError(POLICY_PREDECESSOR_MISMATCH) if ``previous_hash`` is not the current
        policy's hash (None for the first policy): two operators cannot silently overwrite
        each other's update.
        """
        stamp = rfc3339(now)
        new_hash = policy_text_hash(text)
        with self._lock:
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT version, hash FROM policies ORDER BY version DESC LIMIT 1"
                ).fetchone()
                current_version, current_hash = (0, None) if row is None else row
                if previous_hash != current_hash:
                    named = "no predecessor" if previous_hash is None else repr(previous_hash)
                    actual = (
                        "no policy has been applied yet"
                        if current_hash is None
                        else f"the current policy (version {current_version}) is {current_hash}"
                    )
                    raise NetshieldError(
                        f"policy update names predecessor {named} but {actual}",
                        reason=Reason.POLICY_PREDECESSOR_MISMATCH,
                    )
                stored = StoredPolicy(
                    current_version + 1, new_hash, text, stamp, actor, current_hash
                )
                conn.execute(
                    "INSERT INTO policies (version, hash, text, applied_at, actor, previous_hash) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (stored.version, new_hash, text, stamp, actor, current_hash),
                )
                entry = self._append(
                    conn,
                    EV_POLICY,
                    {
                        "version": stored.version,
                        "hash": new_hash,
                        "previous_hash": current_hash,
                        "actor": actor,
                    },
                    now,
                )
            self._witness(entry)
            return stored

    # ------------------------------------------------------------------ attestation outcomes

    def record_issued(
        self,
        *,
        serial: int,
        service: str,
        platform_id: str,
        measurement: str,
        not_after: datetime,
        policy_version: int,
        epoch: int,
        now: datetime,
        fingerprint: str,
    ) -> None:
        """Record an issued certificate; audited as ``attest.allow``."""
        data: dict[str, Any] = {
            "serial": serial_hex(serial),
            "service": service,
            "platform_id": platform_id,
            "measurement": measurement,
            "not_after": rfc3339(not_after),
            "policy_version": policy_version,
            "epoch": epoch,
            "fingerprint": fingerprint,
        }
        with self._lock:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO issued (serial, service, platform_id, measurement, not_after, "
                    "policy_version, epoch, issued_at, fingerprint) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        data["serial"],
                        service,
                        platform_id,
                        measurement,
                        data["not_after"],
                        policy_version,
                        epoch,
                        rfc3339(now),
                        fingerprint,
                    ),
                )
                entry = self._append(conn, EV_ALLOW, data, now)
            self._witness(entry)

    def record_denied(
        self,
        *,
        reason: str,
        detail: str,
        service: str | None,
        platform_id: str | None,
        measurement: str | None,
        now: datetime,
    ) -> None:
        """Record a refused attestation; audited as ``attest.deny``."""
        self._append_audited(
            EV_DENY,
            {
                "reason": reason,
                "detail": detail,
                "service": service,
                "platform_id": platform_id,
                "measurement": measurement,
            },
            now=now,
        )

    def issued(self, serial: int) -> IssuedCert | None:
        rows = self._rows(f"{_ISSUED_SELECT} WHERE serial = ?", (serial_hex(serial),))
        return _issued_of(rows[0]) if rows else None

    def list_issued(self, service: str | None = None) -> list[IssuedCert]:
        """Issued certificates, oldest first, optionally for one service."""
        if service is None:
            rows = self._rows(f"{_ISSUED_SELECT} ORDER BY rowid")
        else:
            rows = self._rows(f"{_ISSUED_SELECT} WHERE service = ? ORDER BY rowid", (service,))
        return [_issued_of(r) for r in rows]

    # ------------------------------------------------------------------ revocations

    def revoke(
        self,
        *,
        kind: RevocationKind,
        target: str,
        now: datetime,
        actor: str,
        note: str = "",
    ) -> Revocation:
        """Revoke an instance (serial hex), a service or a platform; audited as ``revoke``.

        Revoking something already revoked returns the existing revocation unchanged.
        """
        if kind not in REVOCATION_KINDS:
            raise ValueError(f"revocation kind must be one of {REVOCATION_KINDS}")
        with self._lock:
            with self._transaction() as conn:
                target, service, platform_id = self._revocation_target(conn, kind, target)
                existing = conn.execute(
                    f"{_REVOCATION_SELECT} WHERE kind = ? AND target = ?", (kind, target)
                ).fetchone()
                if existing is not None:
                    return _revocation_of(existing)
                (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM revocations").fetchone()
                revocation = Revocation(
                    last + 1, kind, target, rfc3339(now), service, platform_id, actor, note
                )
                conn.execute(
                    "INSERT INTO revocations (seq, kind, target, ts, actor, note, service, "
                    "platform_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        revocation.seq,
                        kind,
                        target,
                        revocation.ts,
                        actor,
                        note,
                        service,
                        platform_id,
                    ),
                )
                entry = self._append(
                    conn,
                    EV_REVOKE,
                    {
                        "revocation_seq": revocation.seq,
                        "kind": kind,
                        "target": target,
                        "service": service,
                        "platform_id": platform_id,
                        "actor": actor,
                        "note": note,
                    },
                    now,
                )
            self._witness(entry)
            return revocation

    @staticmethod
    def _revocation_target(
        conn: sqlite3.Connection, kind: RevocationKind, target: str
    ) -> tuple[str, str | None, str | None]:
        """The canonical target, and the service / platform it concerns."""
        if kind == "instance":
            serial = serial_hex(parse_serial(target))
            row = conn.execute(
                "SELECT service, platform_id FROM issued WHERE serial = ?", (serial,)
            ).fetchone()
            if row is None:
                raise NetshieldError(
                    f"no certificate with serial {serial} was issued by this CAS",
                    reason=Reason.REVOCATION_TARGET_UNKNOWN,
                )
            return serial, row[0], row[1]
        if kind == "service":
            problem = name_problem(target)
            if problem:
                raise NetshieldError(f"cannot revoke service {target!r}: {problem}")
            return target, target, None
        if not target or len(target) > 255 or not target.isprintable():
            raise NetshieldError(
                f"cannot revoke platform {target!r}: not a platform id (1-255 printable characters)"
            )
        return target, None, target

    def revocations(self, since: int = 0) -> list[Revocation]:
        """The revocation feed after position ``since``, in order."""
        rows = self._rows(f"{_REVOCATION_SELECT} WHERE seq > ? ORDER BY seq", (since,))
        return [_revocation_of(r) for r in rows]

    def _revoked_targets(self, kind: RevocationKind) -> frozenset[str]:
        rows = self._rows("SELECT target FROM revocations WHERE kind = ?", (kind,))
        return frozenset(str(r[0]) for r in rows)

    def revoked_services(self) -> frozenset[str]:
        return self._revoked_targets("service")

    def revoked_platforms(self) -> frozenset[str]:
        return self._revoked_targets("platform")

    def is_serial_revoked(self, serial: int) -> bool:
        """True if the certificate, or the service or platform it was issued to, is revoked."""
        rows = self._rows(
            "SELECT 1 FROM revocations r LEFT JOIN issued i ON i.serial = ?1 WHERE "
            "(r.kind = 'instance' AND r.target = ?1) "
            "OR (r.kind = 'service' AND r.target = i.service) "
            "OR (r.kind = 'platform' AND r.target = i.platform_id) LIMIT 1",
            (serial_hex(serial),),
        )
        return bool(rows)

    # ------------------------------------------------------------------ audit

    def audit(self, event: str, data: Mapping[str, Any], *, now: datetime) -> AuditEntry:
        """Append a generic event (e.g. ``cas.start``). Never put key material in ``data``."""
        if not _EVENT_NAME.fullmatch(event) or event in _RESERVED_EVENTS:
            raise ValueError(f"{event!r} is not an event name callers may write")
        return self._append_audited(event, data, now=now)

    def audit_entries(self, since: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries with ``seq > since``, oldest first, at most ``limit`` of them."""
        rows = self._rows(
            f"{_AUDIT_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?",
            (since, -1 if limit is None else max(limit, 0)),
        )
        return [_entry_of(r) for r in rows]

    def audit_head(self) -> CounterValue:
        """``(seq, hash)`` of the newest audit entry."""
        rows = self._rows("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return CounterValue(*rows[0]) if rows else CounterValue(0, GENESIS)

    def audit_snapshot(
        self, since: int = 0, limit: int | None = None
    ) -> tuple[list[AuditEntry], CounterValue, list[str]]:
        """Entries after `since`, the head and the verification, all from one moment.

        Read under the store lock, which every mutation holds through its commit and its counter
        advance, so a concurrent attestation cannot make the head and the entries disagree.
        """
        with self._lock:
            return self.audit_entries(since, limit), self.audit_head(), self.verify_audit()

    def verify_audit(self) -> list[str]:
        """Every problem with the log, its agreement with the rows and with the counter."""
        with self._lock:
            conn = self._require_conn()
            return _verify(conn, self.state_dir / DB_NAME, self._counter)


def _verify(conn: sqlite3.Connection, db_path: Path, counter: MonotonicCounter) -> list[str]:
    entries, problems = _load_entries(conn)
    try:
        value = counter.read()
    except StateError as exc:
        problems.append(str(exc))
        value = None
    else:
        if value is None:
            problems.append(f"the monotonic counter {counter.path} is missing")
    head = None if value is None else (value.seq, value.head)
    problems += verify_chain(entries, expected_head=head)
    problems += _rows_problems(conn, entries)
    return problems


@contextmanager
def _read_only(state_dir: Path) -> Iterator[tuple[sqlite3.Connection, Path, str]]:
    """The database opened read-only with its path and state id; StateError if it is not one."""
    db_path = Path(state_dir) / DB_NAME
    if not db_path.is_file():
        raise _state_error(f"{db_path} does not exist")
    try:
        conn = _connect(db_path, read_only=True)
    except sqlite3.Error as exc:
        raise _state_error(f"{db_path} is not a readable CAS database ({exc})") from None
    try:
        if "meta" not in _tables(conn):
            raise _state_error(f"{db_path} is not a CAS database (no meta table)")
        yield conn, db_path, CasStore._check_meta(conn, db_path)
    except sqlite3.Error as exc:
        raise _state_error(f"{db_path} is not a readable CAS database ({exc})") from None
    finally:
        conn.close()


def verify_state(state_dir: Path, counter_path: Path | None = None) -> list[str]:
    """Problems with the state in ``state_dir`` (empty if intact), for the CLI's offline check.

    Opens the database read-only and never writes anything: no lock, no counter update.
    """
    try:
        with _read_only(state_dir) as (conn, db_path, state_id):
            path = counter_path if counter_path is not None else default_counter_path(state_id)
            return _verify(conn, db_path, MonotonicCounter(path))
    except StateError as exc:
        return [str(exc)]


def read_audit_offline(
    state_dir: Path, counter: MonotonicCounter | None = None
) -> tuple[list[AuditEntry], CounterValue | None, Path]:
    """The whole audit log, the counter's value (None if missing) and the counter's path.

    Read-only like `verify_state` (no lock, no writes); StateError naming the file if the
    database or the counter cannot be read. Rows that are not entries at all are skipped here;
    `verify_state` reports them.
    """
    with _read_only(state_dir) as (conn, _, state_id):
        entries, _problems = _load_entries(conn)
    if counter is None:
        counter = MonotonicCounter(default_counter_path(state_id))
    return entries, counter.read(), counter.path


def _insert_entry(conn: sqlite3.Connection, entry: AuditEntry) -> None:
    conn.execute(
        "INSERT INTO audit (seq, ts, event, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
        (
            entry.seq,
            entry.ts,
            entry.event,
            canonical_json(dict(entry.data)),
            entry.prev_hash,
            entry.hash,
        ),
    )


_AUDIT_SELECT = "SELECT seq, ts, event, data, prev_hash, hash FROM audit"
_POLICY_SELECT = "SELECT version, hash, text, applied_at, actor, previous_hash FROM policies"
_ISSUED_SELECT = (
    "SELECT serial, service, platform_id, measurement, not_after, policy_version, epoch, "
    "issued_at, fingerprint FROM issued"
)
_REVOCATION_SELECT = (
    "SELECT seq, kind, target, ts, service, platform_id, actor, note FROM revocations"
)


def _issued_of(row: tuple[Any, ...]) -> IssuedCert:
    serial, service, platform_id, measurement, not_after, version, epoch, issued_at, fp = row
    return IssuedCert(
        int(serial, 16),
        service,
        platform_id,
        measurement,
        parse_rfc3339(not_after),
        version,
        epoch,
        issued_at,
        fp,
    )


def _entry_of(row: tuple[Any, ...]) -> AuditEntry:
    seq, ts, event, data, prev_hash, hash_ = row
    return AuditEntry(seq, ts, event, json.loads(data), prev_hash, hash_)


def _revocation_of(row: tuple[Any, ...]) -> Revocation:
    return Revocation(*row)
