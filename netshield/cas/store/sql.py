"""`StateTx` in portable SQL, over any DB-API connection or cursor (pure: no driver imported).

The CAS tables are the same in every SQL backend: text columns holding the canonical forms
(see `backend`), integers for sequence numbers and versions. The statements here run
unchanged on SQLite and PostgreSQL; a backend subclasses `SqlStateTx` for its parameter
style, the query that tells an empty database from a CAS one, its ``CREATE TABLE`` text and
the column that orders issued certificates by insertion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from netshield.cas.auditlog import AuditEntry, canonical_json, parse_rfc3339, rfc3339
from netshield.cas.store.backend import Layout
from netshield.cas.store.integrity import Row, StateRows
from netshield.cas.store.model import (
    IssuedCert,
    Revocation,
    RevocationKind,
    StoredPolicy,
)

AUDIT_SELECT = "SELECT seq, ts, event, data, prev_hash, hash FROM audit"
POLICY_SELECT = "SELECT version, hash, text, applied_at, actor, previous_hash FROM policies"
ISSUED_SELECT = (
    "SELECT serial, service, platform_id, measurement, not_after, policy_version, epoch, "
    "issued_at, fingerprint FROM issued"
)
REVOCATION_SELECT = (
    "SELECT seq, kind, target, ts, service, platform_id, actor, note FROM revocations"
)
CHECKPOINT_SELECT = (
    "SELECT c.seq, c.body, s.pem FROM checkpoints c "
    "LEFT JOIN checkpoint_signers s ON s.fingerprint = c.signer"
)


def schema(*, seq: str, issued_order_column: str = "") -> str:
    """The tables of schema version 1 in a backend's dialect: ``seq`` is its type for the audit
    log's sequence numbers, ``issued_order_column`` an extra first column of ``issued`` that
    orders certificates by insertion (none where the database has one, like SQLite's rowid)."""
    return f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nonces (digest TEXT PRIMARY KEY, expires_at TEXT NOT NULL, used_at TEXT);
CREATE INDEX nonces_expiry ON nonces (expires_at);
CREATE TABLE policies (
    version INTEGER PRIMARY KEY, hash TEXT NOT NULL, text TEXT NOT NULL,
    applied_at TEXT NOT NULL, actor TEXT NOT NULL, previous_hash TEXT);
CREATE TABLE issued ({issued_order_column}
    serial TEXT PRIMARY KEY, service TEXT NOT NULL, platform_id TEXT NOT NULL,
    measurement TEXT NOT NULL, not_after TEXT NOT NULL, policy_version INTEGER NOT NULL,
    epoch INTEGER NOT NULL, issued_at TEXT NOT NULL, fingerprint TEXT NOT NULL);
CREATE INDEX issued_service ON issued (service);
CREATE TABLE revocations (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, ts TEXT NOT NULL,
    actor TEXT NOT NULL, note TEXT NOT NULL, service TEXT, platform_id TEXT,
    UNIQUE (kind, target));
CREATE TABLE audit (
    seq {seq} PRIMARY KEY, ts TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
"""


# Schema version -> the statements that bring a database of the version before to it. A new
# database gets the backend's tables (version 1) and then every migration.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("CREATE INDEX audit_event ON audit (event, seq)",),
    # 3: the signed checkpoints (`pki.checkpoint`), one per audit entry, and their signers'
    # certificates named by SHA-256 (one per CAS run)
    3: (
        "CREATE TABLE checkpoint_signers (fingerprint TEXT PRIMARY KEY, pem TEXT NOT NULL)",
        "CREATE TABLE checkpoints (seq BIGINT PRIMARY KEY, body TEXT NOT NULL, signer TEXT NOT NULL)",
    ),
}


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Executor(Protocol):
    """What a DB-API connection offers (sqlite3 and psycopg connections both do)."""

    def execute(self, sql: str, params: tuple[Any, ...], /) -> Cursor: ...


class SqlStateTx:
    """The CAS state's rows in one transaction of ``conn`` (the backend begins and ends it)."""

    placeholder: ClassVar[str] = "?"
    schema: ClassVar[str] = ""  # ";"-separated CREATE statements
    issued_order: ClassVar[str] = "rowid"

    def __init__(self, conn: Executor) -> None:
        self._conn = conn

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> Cursor:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        return self._conn.execute(sql, params)

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return [tuple(r) for r in self._run(sql, params).fetchall()]

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Row | None:
        row = self._run(sql, params).fetchone()
        return None if row is None else tuple(row)

    # --- the state itself
    def table_names(self) -> set[str]:
        raise NotImplementedError

    def layout(self) -> Layout:
        tables = self.table_names()
        if "meta" in tables:
            return "cas"
        return "foreign" if tables else "empty"

    def create_schema(self, meta: Mapping[str, str]) -> None:
        for statement in self.schema.split(";"):
            if statement.strip():
                self._run(statement)
        for statements in MIGRATIONS.values():
            for statement in statements:
                self._run(statement)
        for key, value in meta.items():
            self._run("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))

    def upgrade_schema(self, version: int, target: int) -> None:
        for step in range(version + 1, target + 1):
            for statement in MIGRATIONS.get(step, ()):
                self._run(statement)
        self._run("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))

    def meta(self) -> dict[str, str]:
        return {str(k): v for k, v in self._all("SELECT key, value FROM meta")}

    def state_rows(self) -> StateRows:
        return StateRows(
            audit=self._all(f"{AUDIT_SELECT} ORDER BY seq"),
            policies=self._all("SELECT version, hash, text FROM policies"),
            issued=self._all(
                "SELECT serial, service, platform_id, measurement, not_after, policy_version, "
                "epoch, fingerprint FROM issued"
            ),
            revocations=self._all(
                "SELECT seq, kind, target, service, platform_id FROM revocations"
            ),
            checkpoints=self._all(f"{CHECKPOINT_SELECT} ORDER BY c.seq")
            if "checkpoints" in self.table_names()
            else (),
        )

    # --- the audit chain
    def last_entry(self) -> AuditEntry | None:
        row = self._one(f"{AUDIT_SELECT} ORDER BY seq DESC LIMIT 1")
        return None if row is None else entry_of(row)

    def insert_entry(self, entry: AuditEntry) -> None:
        self._run(
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

    def audit_entries(self, since: int, limit: int | None) -> list[AuditEntry]:
        sql = f"{AUDIT_SELECT} WHERE seq > ? ORDER BY seq"
        params: tuple[int, ...] = (since,)
        if limit is not None:
            sql, params = sql + " LIMIT ?", (since, max(limit, 0))
        return [entry_of(r) for r in self._all(sql, params)]

    def feed_entries(self, since: int, events: tuple[str, ...]) -> list[AuditEntry]:
        marks = ", ".join("?" * len(events))
        sql = f"{AUDIT_SELECT} WHERE event IN ({marks}) AND seq > ? ORDER BY seq"
        return [entry_of(r) for r in self._all(sql, (*events, since))]

    def audit_head(self) -> tuple[int, str] | None:
        row = self._one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return None if row is None else (int(row[0]), str(row[1]))

    def entry_hash(self, seq: int) -> str | None:
        row = self._one("SELECT hash FROM audit WHERE seq = ?", (seq,))
        return None if row is None else str(row[0])

    # --- signed checkpoints
    def insert_checkpoint(self, seq: int, body: str, signer: str, signer_pem: str) -> None:
        self._run(
            "INSERT INTO checkpoint_signers (fingerprint, pem) SELECT ?, ? WHERE NOT EXISTS "
            "(SELECT 1 FROM checkpoint_signers WHERE fingerprint = ?)",
            (signer, signer_pem, signer),
        )
        self._run(
            "INSERT INTO checkpoints (seq, body, signer) VALUES (?, ?, ?)", (seq, body, signer)
        )

    def checkpoint(self, seq: int | None) -> tuple[str, str | None] | None:
        if seq is None:
            row = self._one(f"{CHECKPOINT_SELECT} ORDER BY c.seq DESC LIMIT 1")
        else:
            row = self._one(f"{CHECKPOINT_SELECT} WHERE c.seq = ?", (seq,))
        return None if row is None else (str(row[1]), None if row[2] is None else str(row[2]))

    # --- nonces
    def prune_nonces(self, expired_before: str) -> None:
        self._run("DELETE FROM nonces WHERE expires_at < ?", (expired_before,))

    def use_nonce(self, digest: str, expires_at: str, now: str) -> bool:
        cursor = self._run(
            "INSERT INTO nonces (digest, expires_at, used_at) VALUES (?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING",
            (digest, expires_at, now),
        )
        return cursor.rowcount == 1

    # --- policies
    def latest_policy(self) -> StoredPolicy | None:
        row = self._one(f"{POLICY_SELECT} ORDER BY version DESC LIMIT 1")
        return None if row is None else StoredPolicy(*row)

    def policy_version(self) -> int:
        row = self._one("SELECT coalesce(max(version), 0) FROM policies")
        return 0 if row is None else int(row[0])

    def policies(self) -> list[StoredPolicy]:
        return [StoredPolicy(*r) for r in self._all(f"{POLICY_SELECT} ORDER BY version")]

    def policy(self, version: int) -> StoredPolicy | None:
        row = self._one(f"{POLICY_SELECT} WHERE version = ?", (version,))
        return None if row is None else StoredPolicy(*row)

    def insert_policy(self, policy: StoredPolicy) -> None:
        self._run(
            "INSERT INTO policies (version, hash, text, applied_at, actor, previous_hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                policy.version,
                policy.hash,
                policy.text,
                policy.applied_at,
                policy.actor,
                policy.previous_hash,
            ),
        )

    # --- issued certificates
    def insert_issued(self, cert: IssuedCert) -> None:
        self._run(
            "INSERT INTO issued (serial, service, platform_id, measurement, not_after, "
            "policy_version, epoch, issued_at, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cert.serial_hex,
                cert.service,
                cert.platform_id,
                cert.measurement,
                rfc3339(cert.not_after),
                cert.policy_version,
                cert.epoch,
                cert.issued_at,
                cert.fingerprint,
            ),
        )

    def issued(self, serial: str) -> IssuedCert | None:
        row = self._one(f"{ISSUED_SELECT} WHERE serial = ?", (serial,))
        return None if row is None else issued_of(row)

    def list_issued(self, service: str | None) -> list[IssuedCert]:
        order = f"ORDER BY {self.issued_order}"
        if service is None:
            rows = self._all(f"{ISSUED_SELECT} {order}")
        else:
            rows = self._all(f"{ISSUED_SELECT} WHERE service = ? {order}", (service,))
        return [issued_of(r) for r in rows]

    # --- revocations
    def revocation(self, kind: RevocationKind, target: str) -> Revocation | None:
        row = self._one(f"{REVOCATION_SELECT} WHERE kind = ? AND target = ?", (kind, target))
        return None if row is None else Revocation(*row)

    def last_revocation_seq(self) -> int:
        row = self._one("SELECT coalesce(max(seq), 0) FROM revocations")
        return 0 if row is None else int(row[0])

    def insert_revocation(self, revocation: Revocation) -> None:
        self._run(
            "INSERT INTO revocations (seq, kind, target, ts, actor, note, service, platform_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                revocation.seq,
                revocation.kind,
                revocation.target,
                revocation.ts,
                revocation.actor,
                revocation.note,
                revocation.service,
                revocation.platform_id,
            ),
        )

    def revocations(self, since: int) -> list[Revocation]:
        rows = self._all(f"{REVOCATION_SELECT} WHERE seq > ? ORDER BY seq", (since,))
        return [Revocation(*r) for r in rows]

    def revoked_targets(self, kind: RevocationKind) -> frozenset[str]:
        rows = self._all("SELECT target FROM revocations WHERE kind = ?", (kind,))
        return frozenset(str(r[0]) for r in rows)

    def is_serial_revoked(self, serial: str) -> bool:
        row = self._one(
            "SELECT 1 FROM revocations r LEFT JOIN issued i ON i.serial = ? WHERE "
            "(r.kind = 'instance' AND r.target = ?) "
            "OR (r.kind = 'service' AND r.target = i.service) "
            "OR (r.kind = 'platform' AND r.target = i.platform_id) LIMIT 1",
            (serial, serial),
        )
        return row is not None


def entry_of(row: Row) -> AuditEntry:
    seq, ts, event, data, prev_hash, hash_ = row
    return AuditEntry(seq, ts, event, json.loads(data), prev_hash, hash_)


def issued_of(row: Row) -> IssuedCert:
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
