"""The storage interface the CAS state logic talks to (pure: protocols only, no I/O).

A `Backend` is one database holding one CAS state; `StateTx` is what the logic may read and
write inside one of its transactions. The logic above (`core.CasStore`: nonces, policy
versions, issued serials, revocations, the audit chain and every rollback check) is written
once against these two protocols; `sqlite.SqliteBackend` (the embedded default) and the other
backends implement them. A backend stores rows; it never decides whether they can be trusted.

Contract every backend keeps:
- `Backend.write` runs ``work`` in one read-write transaction and commits, or rolls back and
  re-raises whatever ``work`` raised. With ``chained=True`` (the work appends to the audit
  chain) it serializes the work against every other chained writer of the same database, in
  this process and in any other, so the chain stays one chain. It may run ``work`` more than
  once (a retried transaction), so ``work`` must have no effect outside ``tx``.
- `Backend.read` runs ``work`` against one consistent view of committed rows; with
  ``snapshot=False`` (work that runs one statement, which sees one view anyway) a backend may
  skip the transaction around it.
- A ``shared`` backend may be written by other processes (CAS replicas) at any time;
  `Backend.wait_for_change` returns when one of them committed a chained write, or after
  ``timeout`` seconds, whichever is first (it may also return early for no reason).
- Calls after `Backend.close` raise ``RuntimeError("the CAS store is closed")``; close is
  idempotent.
- Texts are stored as given: timestamps as `auditlog.rfc3339`, serials as `model.serial_hex`,
  audit data as `auditlog.canonical_json`, so rows compare equal to the audit entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, Protocol, TypeVar

from netshield.cas.auditlog import AuditEntry
from netshield.cas.store.integrity import StateRows
from netshield.cas.store.model import IssuedCert, Revocation, RevocationKind, StoredPolicy

T = TypeVar("T")

Layout = Literal["empty", "cas", "foreign"]

# How a shared database serializes the writers of the audit chain (see `postgres`).
ChainLock = Literal["advisory", "serializable"]
CHAIN_LOCKS: tuple[ChainLock, ...] = ("advisory", "serializable")


class StateTx(Protocol):
    """The rows of one CAS state, inside one transaction of its backend."""

    # --- the state itself
    def layout(self) -> Layout:
        """Either "empty" (nothing there yet), "cas" (a CAS state) or "foreign" (other tables)."""
        ...

    def create_schema(self, meta: Mapping[str, str]) -> None:
        """Create the CAS tables in an empty database and store ``meta`` (state id, version)."""
        ...

    def upgrade_schema(self, version: int, target: int) -> None:
        """Bring the tables of schema ``version`` to ``target`` (the meta row included)."""
        ...

    def meta(self) -> dict[str, str]: ...

    def state_rows(self) -> StateRows:
        """Every row the integrity checks read, untyped, as stored."""
        ...

    # --- the audit chain
    def last_entry(self) -> AuditEntry | None: ...

    def insert_entry(self, entry: AuditEntry) -> None: ...

    def audit_entries(self, since: int, limit: int | None) -> list[AuditEntry]:
        """Entries with ``seq > since``, oldest first, at most ``limit`` (None: all)."""
        ...

    def feed_entries(self, since: int, events: tuple[str, ...]) -> list[AuditEntry]:
        """Entries of the given events with ``seq > since``, oldest first (indexed)."""
        ...

    def audit_head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest entry, None for an empty log."""
        ...

    def entry_hash(self, seq: int) -> str | None:
        """The stored hash of entry ``seq``, None if there is no such row."""
        ...

    # --- signed checkpoints (`pki.checkpoint`): one per audit entry, in the entry's transaction
    def insert_checkpoint(self, seq: int, body: str, signer: str, signer_pem: str) -> None:
        """Store the checkpoint of entry ``seq`` (its body text, its signer's SHA-256), and the
        signer's PEM certificate unless it is stored already."""
        ...

    def checkpoint(self, seq: int | None) -> tuple[str, str | None] | None:
        """``(body, signer PEM)`` of entry ``seq``'s checkpoint (None: the newest), None if there
        is none; the PEM is None if the signer's row is missing."""
        ...

    # --- nonces (stored as digests; see `model.nonce_digest`), only once they are used
    def prune_nonces(self, expired_before: str) -> None: ...

    def use_nonce(self, digest: str, expires_at: str, now: str) -> bool:
        """Store the nonce as used, in one statement; False if it was stored already (used by
        anyone before, concurrently included)."""
        ...

    # --- policies
    def latest_policy(self) -> StoredPolicy | None: ...

    def policies(self) -> list[StoredPolicy]: ...

    def policy_version(self) -> int:
        """The newest policy version, 0 if none was applied."""
        ...

    def policy(self, version: int) -> StoredPolicy | None: ...

    def insert_policy(self, policy: StoredPolicy) -> None: ...

    # --- issued certificates
    def insert_issued(self, cert: IssuedCert) -> None: ...

    def issued(self, serial: str) -> IssuedCert | None: ...

    def list_issued(self, service: str | None) -> list[IssuedCert]:
        """Issued certificates in the order they were recorded, optionally for one service."""
        ...

    # --- revocations
    def revocation(self, kind: RevocationKind, target: str) -> Revocation | None: ...

    def last_revocation_seq(self) -> int: ...

    def insert_revocation(self, revocation: Revocation) -> None: ...

    def revocations(self, since: int) -> list[Revocation]: ...

    def revoked_targets(self, kind: RevocationKind) -> frozenset[str]: ...

    def is_serial_revoked(self, serial: str) -> bool:
        """True if the instance, or the service or platform it was issued to, is revoked."""
        ...


class Backend(Protocol):
    """One database holding one CAS state (see the module docstring for the contract)."""

    @property
    def location(self) -> str:
        """The database for sentences: a file path, or a URL without its password."""
        ...

    @property
    def home(self) -> str:
        """Where the state lives for sentences (the state directory, or the database)."""
        ...

    @property
    def marker_key(self) -> str:
        """A stable name of this location, for the record outside it that a state lived here."""
        ...

    @property
    def restore_advice(self) -> str:
        """What an operator restores after a rollback, as the end of a sentence."""
        ...

    @property
    def shared(self) -> bool:
        """True if other processes may write this database while it is open."""
        ...

    def wait_for_change(self, timeout: float) -> None: ...

    def read(self, work: Callable[[StateTx], T], *, snapshot: bool = True) -> T: ...

    def write(self, work: Callable[[StateTx], T], *, chained: bool) -> T: ...

    def close(self) -> None: ...
