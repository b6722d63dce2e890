"""The CAS state: policy versions, nonces, issued serials, revocations and the audit log.

`CasStore` is the state's logic, written once above the storage interface (`backend`): every
mutating call writes its rows and exactly one audit entry in one chained transaction of its
backend, commits, and then advances the monotonic counter (kept outside the database) to the
new audit head.

Guarantees (AM7.1, disk rollback), whatever the backend (the checks are in `rollback`):
- `CasStore.attach` (and `CasStore.open` for a state directory) fails closed, with one
  sentence naming the database and the fix, when the audit chain is broken, when the rows no
  longer match the audit log, when the log is behind its monotonic counter or diverges from it
  (an older or another copy was restored), when the counter is missing for a non-empty
  database (unless ``adopt_counter``), and, with the default counter location, when the
  database of a location that had a state was deleted.
- A crash between commit and counter update leaves the log one step ahead; the next open
  checks that the log still contains the counter's head and then catches the counter up.
- Nonces are not audited (they are the hot path) and only used ones are stored (issued nonces
  are self-certifying, `netshield.nonces`); a restored copy that would revive a used nonce is
  still caught, because every consumed nonce is followed by an audited decision.
- With a `CheckpointSigner` (the CAS always has one), every audit entry gets a signed
  checkpoint in its own transaction, and open refuses a state whose checkpoints disagree with
  its log or whose head the CAS did not sign (`AUDIT_CHAIN_BROKEN`): rewriting the chain and
  the counter together needs the CAS's in-memory key.
- No key material is stored: used nonces are kept as SHA-256 digests; certificates only by
  serial, fingerprint and claims; checkpoints by their public signer certificate.

Concurrency: with a backend of its own (SQLite), every audited mutation holds one re-entrant
lock for its whole duration (transaction and counter write included), so the asyncio thread
and worker threads may call it concurrently and see serialized effects and a counter that only
moves forward. With a shared backend (PostgreSQL, several replicas) the backend serializes the
chain and the counter is a witness (`MonotonicCounter.witness`): it keeps the newest head this
replica wrote or saw (`CasStore.observe`), so mutations run concurrently. Nonce calls and reads
need only the backend. Mutating calls fsync the counter; call them from a worker thread if
that matters.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from netshield.cas.auditlog import GENESIS, AuditEntry, make_entry, rfc3339
from netshield.cas.counter import (
    CounterValue,
    MonotonicCounter,
    default_counter_path,
)
from netshield.cas.store.backend import Backend, ChainLock, StateTx
from netshield.cas.store.model import (
    CHECKPOINT_SCHEMA,
    EV_ADOPT,
    EV_ADOPT_UNSIGNED,
    EV_ALLOW,
    EV_CREATE,
    EV_DENY,
    EV_MIGRATE,
    EV_POLICY,
    EV_REVOKE,
    EV_UPGRADE,
    FEED_EVENTS,
    RESERVED_EVENTS,
    REVOCATION_KINDS,
    SCHEMA_VERSION,
    IssuedCert,
    Revocation,
    RevocationKind,
    SerialTaken,
    StoredPolicy,
    nonce_digest,
    parse_serial,
    policy_text_hash,
    serial_hex,
    state_error,
)
from netshield.cas.store.rollback import (
    check_on_open,
    mark_state,
    read_meta,
    refuse_unexpected_layout,
    snapshot_audit,
)
from netshield.cas.store.sqlite import SqliteBackend
from netshield.errors import NetshieldError
from netshield.identity import name_problem
from netshield.nonces import NONCE_BYTES, NonceStatus
from netshield.pki.checkpoint import Checkpoint, CheckpointSigner, SignedCheckpoint
from netshield.reasons import Reason

_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
_NONCE_GRACE = timedelta(minutes=1)  # used nonces' rows stay this long past expiry
OBSERVE_WITNESS_INTERVAL = 1.0  # seconds: how far a replica's witness may lag what it saw


class CasStore:
    """The CAS state. Create with `CasStore.open` or `CasStore.attach`; thread-safe."""

    def __init__(
        self,
        *,
        backend: Backend,
        counter: MonotonicCounter,
        state_id: str,
        signer: CheckpointSigner | None = None,
    ) -> None:
        self.backend = backend
        self.state_id = state_id
        self.created = False  # set by `attach`: this open created the state
        self.upgraded_from: int | None = None  # set by `attach`: the schema version it found
        self.signer = signer
        self._counter = counter
        self._observed_at = float("-inf")
        self._lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if backend.shared else threading.RLock()
        )

    def __repr__(self) -> str:
        return f"CasStore({self.backend.home!r}, state_id={self.state_id!r})"

    @property
    def counter_path(self) -> Path:
        return self._counter.path

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        database: str | None = None,
        password: str | None = None,
        chain_lock: ChainLock = "advisory",
        counter: MonotonicCounter | None = None,
        adopt_counter: bool = False,
        signer: CheckpointSigner | None = None,
        adopt_unsigned: bool = False,
        now: datetime | None = None,
    ) -> CasStore:
        """Open (or create) the state; StateError if it cannot be trusted.

        Without ``database``: the SQLite state in ``state_dir``, held by this process. With a
        ``postgresql://`` URL: the state in that database, shared with other replicas
        (``password`` overrides libpq's PGPASSWORD and .pgpass; ``chain_lock`` is how the
        audit chain is serialized, see `postgres`). ``now`` stamps the audit entries open may
        write (creation, counter adoption); it defaults to the clock, since opening is I/O.
        """
        when = now if now is not None else datetime.now(UTC)
        backend: Backend
        if database is None:
            backend = SqliteBackend.open(Path(state_dir))
        else:
            from netshield.cas.store.postgres import PostgresBackend

            backend = PostgresBackend.open(database, password=password, chain_lock=chain_lock)
        try:
            return cls.attach(
                backend,
                counter=counter,
                adopt_counter=adopt_counter,
                signer=signer,
                adopt_unsigned=adopt_unsigned,
                now=when,
            )
        except BaseException:
            backend.close()
            raise

    @classmethod
    def attach(
        cls,
        backend: Backend,
        *,
        counter: MonotonicCounter | None,
        adopt_counter: bool,
        now: datetime,
        signer: CheckpointSigner | None = None,
        adopt_unsigned: bool = False,
    ) -> CasStore:
        """The state in ``backend`` (created if the database is empty), once it is trusted.

        With ``signer`` every audit entry gets a signed checkpoint in its own transaction, and
        the log must be the one the CAS signed (`rollback.check_on_open`); a log with no
        checkpoint at all (from before signed checkpoints) is refused unless ``adopt_unsigned``,
        which signs it as it is (audited as ``state.adopt_unsigned``). Without one (tests,
        offline tools such as `cas migrate`) checkpoints are neither written nor checked. An
        older schema is upgraded (``state.upgrade``). Does not close ``backend`` on failure: the
        caller that opened it does.
        """
        created = False
        if backend.read(lambda tx: tx.layout()) != "cas":
            refuse_unexpected_layout(backend, default_counter=counter is None)
            new_id = str(uuid.uuid4())
            created = backend.write(lambda tx: _create(tx, new_id, now, signer), chained=True)
        state_id, version = read_meta(backend)
        if counter is None:
            counter = MonotonicCounter(default_counter_path(state_id))
        store = cls(backend=backend, counter=counter, state_id=state_id, signer=signer)
        never_signed = signer is not None and not created and _never_signed(backend, version)
        action = check_on_open(
            backend,
            counter,
            created=created,
            adopt_counter=adopt_counter,
            checkpoints=None if signer is None else (state_id, signer.verify),
            adopt_unsigned=adopt_unsigned,
        )
        if action is not None and action.adopt and action.head is not None:
            data = {"counter": str(counter.path), "seq": action.head.seq}
            store._append_audited(EV_ADOPT, data, now=now)
        elif action is not None:
            store._witness(action.head)
        store.created = created
        if version < SCHEMA_VERSION:
            store._upgrade(version, now)
            store.upgraded_from = version
        if never_signed and adopt_unsigned:
            head = store.audit_head()
            store._append_audited(EV_ADOPT_UNSIGNED, {"seq": head.seq, "hash": head.head}, now=now)
        if counter.path == default_counter_path(state_id):
            mark_state(backend, state_id)
        return store

    @property
    def schema_version(self) -> int:
        return read_meta(self.backend)[1]

    def record_migration(self, source: str, *, from_version: int, now: datetime) -> AuditEntry:
        """Audit that this state was copied here from ``source``; ``state.migrate``."""
        data = {"from": source, "from_version": from_version, "to": self.backend.location}
        return self._append_audited(EV_MIGRATE, data, now=now)

    def _upgrade(self, version: int, now: datetime) -> None:
        """Bring an older schema to this netshield's; audited as ``state.upgrade``."""

        def work(tx: StateTx) -> AuditEntry | None:
            current = int(tx.meta()["schema_version"])
            if current >= SCHEMA_VERSION:
                return None  # another replica upgraded it first
            tx.upgrade_schema(current, SCHEMA_VERSION)
            data = {"from_version": current, "to_version": SCHEMA_VERSION}
            return self._append(tx, EV_UPGRADE, data, now)

        with self._lock:
            entry = self.backend.write(work, chained=True)
            if entry is not None:
                self._witness(entry)

    def close(self) -> None:
        """Close the backend (for SQLite: release the state directory); idempotent."""
        with self._lock:
            self.backend.close()

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

    def _witness(self, entry: AuditEntry | None) -> None:
        value = CounterValue(0, GENESIS) if entry is None else CounterValue(entry.seq, entry.hash)
        if self.backend.shared:
            self._counter.witness(value)
        else:
            self._counter.advance(value)

    def observe(self) -> tuple[CounterValue, int]:
        """Check the database against this replica's witness and witness its head; the head
        and the current policy version (0: none yet).

        StateError(STATE_ROLLED_BACK) if the database no longer holds the entry the counter
        recorded (it was restored from an older dump, or replaced) while this CAS runs.
        """
        value = self._counter.read()
        seq = 0 if value is None else value.seq
        head, witnessed, policy = self.backend.read(
            lambda tx: (tx.audit_head(), tx.entry_hash(seq), tx.policy_version())
        )
        if value is not None and value.seq > 0:
            problem = None
            if head is None or head[0] < value.seq:
                problem = (
                    f"{self.backend.location} is at audit entry {0 if head is None else head[0]} "
                    f"but this replica's monotonic counter {self.counter_path} says {value.seq}"
                )
            elif witnessed != value.head:
                problem = (
                    f"audit entry {value.seq} in {self.backend.location} is not the one this "
                    f"replica's monotonic counter {self.counter_path} recorded"
                )
            if problem:
                raise state_error(
                    f"{problem}: the database was rolled back or replaced while the CAS ran; "
                    f"{self.backend.restore_advice}",
                    hint=Reason.STATE_ROLLED_BACK.info.hint,
                    reason=Reason.STATE_ROLLED_BACK,
                )
        if head is None:
            return CounterValue(0, GENESIS), policy
        current = CounterValue(*head)
        moment = time.monotonic()
        if self.backend.shared and moment - self._observed_at >= OBSERVE_WITNESS_INTERVAL:
            self._counter.witness(current)  # at most once a second: each write is an fsync
            self._observed_at = moment
        return current, policy

    def _append(
        self, tx: StateTx, event: str, data: Mapping[str, Any], now: datetime
    ) -> AuditEntry:
        """Append one entry (and its signed checkpoint) inside the caller's transaction."""
        return _append(tx, event, data, now, self.signer, self.state_id)

    def _append_audited(self, event: str, data: Mapping[str, Any], *, now: datetime) -> AuditEntry:
        with self._lock:
            entry = self.backend.write(lambda tx: self._append(tx, event, data, now), chained=True)
            self._witness(entry)
            return entry

    # ------------------------------------------------------------------ nonces

    def use_nonce(self, nonce: bytes, *, expires_at: datetime, now: datetime) -> NonceStatus:
        """Record that the (genuine, unexpired: `NonceMinter.check`) ``nonce`` is used: VALID the
        first time at any replica, REUSED after. One statement; rows of nonces that expired
        (with a minute's grace for replicas' clocks) are pruned here."""
        if len(nonce) != NONCE_BYTES:
            return NonceStatus.UNKNOWN
        digest, stamp = nonce_digest(nonce), rfc3339(now)

        def work(tx: StateTx) -> bool:
            tx.prune_nonces(rfc3339(now - _NONCE_GRACE))
            return tx.use_nonce(digest, rfc3339(expires_at), stamp)

        first = self.backend.write(work, chained=False)
        return NonceStatus.VALID if first else NonceStatus.REUSED

    # ------------------------------------------------------------------ policy

    def current_policy(self) -> StoredPolicy | None:
        return self.backend.read(lambda tx: tx.latest_policy(), snapshot=False)

    def policy_version(self, version: int) -> StoredPolicy | None:
        return self.backend.read(lambda tx: tx.policy(version), snapshot=False)

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

        def work(tx: StateTx) -> tuple[StoredPolicy, AuditEntry]:
            current = tx.latest_policy()
            current_version = 0 if current is None else current.version
            current_hash = None if current is None else current.hash
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
            stored = StoredPolicy(current_version + 1, new_hash, text, stamp, actor, current_hash)
            tx.insert_policy(stored)
            data = {
                "version": stored.version,
                "hash": new_hash,
                "previous_hash": current_hash,
                "actor": actor,
            }
            return stored, self._append(tx, EV_POLICY, data, now)

        with self._lock:
            stored, entry = self.backend.write(work, chained=True)
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
        evidence_type: str | None = None,
    ) -> AuditEntry:
        """Record an issued certificate; audited as ``attest.allow`` (with the evidence type
        when it is hardware evidence, so entries of the simulated platform read as before).
        Returns that audit entry.

        `SerialTaken` (nothing written) if a certificate with ``serial`` was recorded already,
        by this CAS or by any replica sharing its database: the caller issues another.
        """
        cert = IssuedCert(
            serial,
            service,
            platform_id,
            measurement,
            not_after,
            policy_version,
            epoch,
            rfc3339(now),
            fingerprint,
        )
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
        if evidence_type not in (None, "sim"):
            data["evidence_type"] = evidence_type

        def work(tx: StateTx) -> AuditEntry:
            if tx.issued(cert.serial_hex) is not None:
                raise SerialTaken(f"certificate serial {cert.serial_hex} was issued already")
            tx.insert_issued(cert)
            return self._append(tx, EV_ALLOW, data, now)

        with self._lock:
            entry = self.backend.write(work, chained=True)
            self._witness(entry)
            return entry

    def record_denied(
        self,
        *,
        reason: str,
        detail: str,
        service: str | None,
        platform_id: str | None,
        measurement: str | None,
        now: datetime,
        evidence_type: str | None = None,
    ) -> None:
        """Record a refused attestation; audited as ``attest.deny`` (with the evidence type when
        it is hardware evidence: which check failed for which type)."""
        data: dict[str, Any] = {
            "reason": reason,
            "detail": detail,
            "service": service,
            "platform_id": platform_id,
            "measurement": measurement,
        }
        if evidence_type not in (None, "sim"):
            data["evidence_type"] = evidence_type
        self._append_audited(EV_DENY, data, now=now)

    def issued(self, serial: int) -> IssuedCert | None:
        return self.backend.read(lambda tx: tx.issued(serial_hex(serial)), snapshot=False)

    def list_issued(self, service: str | None = None) -> list[IssuedCert]:
        """Issued certificates, oldest first, optionally for one service."""
        return self.backend.read(lambda tx: tx.list_issued(service), snapshot=False)

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

        def work(tx: StateTx) -> tuple[Revocation, AuditEntry | None]:
            canonical, service, platform_id = _revocation_target(tx, kind, target)
            existing = tx.revocation(kind, canonical)
            if existing is not None:
                return existing, None
            revocation = Revocation(
                tx.last_revocation_seq() + 1,
                kind,
                canonical,
                rfc3339(now),
                service,
                platform_id,
                actor,
                note,
            )
            tx.insert_revocation(revocation)
            data = {
                "revocation_seq": revocation.seq,
                "kind": kind,
                "target": canonical,
                "service": service,
                "platform_id": platform_id,
                "actor": actor,
                "note": note,
            }
            return revocation, self._append(tx, EV_REVOKE, data, now)

        with self._lock:
            revocation, entry = self.backend.write(work, chained=True)
            if entry is not None:
                self._witness(entry)
            return revocation

    def revocations(self, since: int = 0) -> list[Revocation]:
        """The revocation feed after position ``since``, in order."""
        return self.backend.read(lambda tx: tx.revocations(since), snapshot=False)

    def revoked_services(self) -> frozenset[str]:
        return self.backend.read(lambda tx: tx.revoked_targets("service"), snapshot=False)

    def revoked_platforms(self) -> frozenset[str]:
        return self.backend.read(lambda tx: tx.revoked_targets("platform"), snapshot=False)

    def revoked(self) -> tuple[frozenset[str], frozenset[str]]:
        """The revoked platforms and services, from one snapshot (what an attestation checks)."""
        return self.backend.read(
            lambda tx: (tx.revoked_targets("platform"), tx.revoked_targets("service"))
        )

    def is_serial_revoked(self, serial: int) -> bool:
        """True if the certificate, or the service or platform it was issued to, is revoked."""
        return self.backend.read(
            lambda tx: tx.is_serial_revoked(serial_hex(serial)), snapshot=False
        )

    # ------------------------------------------------------------------ audit

    def audit(self, event: str, data: Mapping[str, Any], *, now: datetime) -> AuditEntry:
        """Append a generic event (e.g. ``cas.start``). Never put key material in ``data``."""
        if not _EVENT_NAME.fullmatch(event) or event in RESERVED_EVENTS:
            raise ValueError(f"{event!r} is not an event name callers may write")
        return self._append_audited(event, data, now=now)

    def audit_entries(self, since: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries with ``seq > since``, oldest first, at most ``limit`` of them."""
        return self.backend.read(lambda tx: tx.audit_entries(since, limit), snapshot=False)

    def feed_entries(self, since: int = 0) -> tuple[list[AuditEntry], int]:
        """The revocation and policy entries after ``since``, oldest first, and the head's seq,
        from one snapshot (the feed: an index serves it, not a scan of the whole log)."""
        entries, head = self.backend.read(
            lambda tx: (tx.feed_entries(since, FEED_EVENTS), tx.audit_head())
        )
        return entries, 0 if head is None else head[0]

    def audit_head(self) -> CounterValue:
        """``(seq, hash)`` of the newest audit entry."""
        head = self.backend.read(lambda tx: tx.audit_head(), snapshot=False)
        return CounterValue(*head) if head else CounterValue(0, GENESIS)

    def audit_snapshot(
        self, since: int = 0, limit: int | None = None
    ) -> tuple[list[AuditEntry], CounterValue, list[str]]:
        """Entries after `since`, the head and the verification, all from one moment.

        The counter is read first and the rows in one snapshot after it: every entry the
        counter witnessed was committed before, so a concurrent attestation (here or at another
        replica) cannot make the head, the entries and the counter disagree.
        """
        signed = None if self.signer is None else (self.state_id, self.signer.verify)
        with self._lock:
            return snapshot_audit(self.backend, self._counter, since, limit, checkpoints=signed)

    def verify_audit(self) -> list[str]:
        """Every problem with the log, its agreement with the rows, with the counter and with
        the checkpoints the CAS signed."""
        return self.audit_snapshot(0, 0)[2]

    def checkpoint(self, seq: int | None = None) -> SignedCheckpoint | None:
        """The signed checkpoint of audit entry ``seq`` (None: of the newest entry), None if
        there is none. Not verified here: whoever relies on it verifies it."""
        row = self.backend.read(lambda tx: tx.checkpoint(seq))
        if row is None or row[1] is None:
            return None
        return SignedCheckpoint.from_body(row[0], row[1])


def _never_signed(backend: Backend, version: int) -> bool:
    """True if the state carries no signed checkpoint at all (older schemas have no table)."""
    return version < CHECKPOINT_SCHEMA or backend.read(lambda tx: tx.checkpoint(None)) is None


def _create(tx: StateTx, state_id: str, now: datetime, signer: CheckpointSigner | None) -> bool:
    """Create the schema and its first entry; False if another writer created it first."""
    if tx.layout() != "empty":
        return False
    tx.create_schema({"state_id": state_id, "schema_version": str(SCHEMA_VERSION)})
    data = {"state_id": state_id, "schema_version": SCHEMA_VERSION}
    _append(tx, EV_CREATE, data, now, signer, state_id)
    return True


def _append(
    tx: StateTx,
    event: str,
    data: Mapping[str, Any],
    now: datetime,
    signer: CheckpointSigner | None,
    state_id: str,
) -> AuditEntry:
    """Append one entry inside the caller's transaction, with its signed checkpoint (the policy
    version in force after it) when there is a signer."""
    entry = make_entry(tx.last_entry(), event=event, data=data, now=now)
    tx.insert_entry(entry)
    if signer is not None:
        policy = tx.latest_policy()
        version = 0 if policy is None else policy.version
        signed = signer.sign(Checkpoint(state_id, entry.seq, entry.hash, version, entry.ts))
        tx.insert_checkpoint(
            entry.seq, signed.body_text(), signed.signer_fingerprint, signed.signer_pem()
        )
    return entry


def _revocation_target(
    tx: StateTx, kind: RevocationKind, target: str
) -> tuple[str, str | None, str | None]:
    """The canonical target, and the service / platform it concerns."""
    if kind == "instance":
        serial = serial_hex(parse_serial(target))
        cert = tx.issued(serial)
        if cert is None:
            raise NetshieldError(
                f"no certificate with serial {serial} was issued by this CAS",
                reason=Reason.REVOCATION_TARGET_UNKNOWN,
            )
        return serial, cert.service, cert.platform_id
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
