"""Moving a CAS state from its SQLite state directory into PostgreSQL, chain and witness intact.

`copy_state` refuses unless the source is intact (its chain, its rows and its monotonic counter
agree, and no CAS holds it: it takes the state directory's lock) and the target database holds
no CAS state. It copies the state id, every audit entry, policy version, issued certificate and
revocation in one transaction, so the target is all or nothing, then opens the target with the
source's counter, which runs every open-time check on the copy, and appends ``state.migrate``.
That entry moves the counter past the source's head: the source can never be started again as
if it were current (its own counter refuses it as rolled back). The checkpoints the CAS signed
come along as they are: the CAS checks them when it opens the copy, and sidecars find the ones
they remember. Nonces are not copied: they live seconds, and a sidecar whose nonce is lost
attests again.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from netshield.cas.auditlog import AuditEntry
from netshield.cas.counter import MonotonicCounter, default_counter_path
from netshield.cas.store.backend import StateTx
from netshield.cas.store.core import CasStore
from netshield.cas.store.model import (
    SCHEMA_VERSION,
    IssuedCert,
    Revocation,
    StoredPolicy,
    state_error,
)
from netshield.cas.store.postgres import PostgresBackend
from netshield.cas.store.rollback import check_on_open, read_meta
from netshield.cas.store.sqlite import DB_NAME, SqliteBackend
from netshield.pki.checkpoint import SignedCheckpoint


def copy_state(
    state_dir: Path,
    *,
    database: str,
    password: str | None,
    counter: MonotonicCounter | None,
    now: datetime,
) -> CasStore:
    """The state of ``state_dir`` copied into ``database``, opened there; StateError if not."""
    if not (state_dir / DB_NAME).is_file():
        raise state_error(f"{state_dir / DB_NAME} does not exist: nothing to migrate")
    source = SqliteBackend.open(state_dir)
    try:
        state_id, version = read_meta(source)
        if counter is None:
            counter = MonotonicCounter(default_counter_path(state_id))
        check_on_open(source, counter, created=False, adopt_counter=False)
        state = source.read(_read_all)
        target = PostgresBackend.open(database, password=password)
        try:
            target.write(lambda tx: _write_all(tx, state_id, state), chained=True)
        except BaseException:
            target.close()
            raise
        store = CasStore.attach(target, counter=counter, adopt_counter=False, now=now)
        store.record_migration(source.location, from_version=version, now=now)
        return store
    finally:
        source.close()


_State = tuple[
    list[AuditEntry], list[StoredPolicy], list[IssuedCert], list[Revocation], list[SignedCheckpoint]
]


def _read_all(tx: StateTx) -> _State:
    return (
        tx.audit_entries(0, None),
        tx.policies(),
        tx.list_issued(None),
        tx.revocations(0),
        [SignedCheckpoint.from_body(body, pem) for _seq, body, pem in tx.state_rows().checkpoints],
    )


def _write_all(tx: StateTx, state_id: str, state: _State) -> None:
    if tx.layout() != "empty":
        raise state_error(
            "the target database already holds tables; migrate into an empty database (or "
            "schema) and start the CAS replicas on it afterwards"
        )
    tx.create_schema({"state_id": state_id, "schema_version": str(SCHEMA_VERSION)})
    entries, policies, issued, revocations, checkpoints = state
    for entry in entries:
        tx.insert_entry(entry)
    for policy in policies:
        tx.insert_policy(policy)
    for cert in issued:
        tx.insert_issued(cert)
    for revocation in revocations:
        tx.insert_revocation(revocation)
    for signed in checkpoints:  # the CAS's signatures come along: sidecars still find theirs
        tx.insert_checkpoint(
            signed.checkpoint.seq,
            signed.body_text(),
            signed.signer_fingerprint,
            signed.signer_pem(),
        )
