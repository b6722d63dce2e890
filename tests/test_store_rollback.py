"""AM7.1 disk rollback and tampering: CasStore.open fails closed with one sentence, twins pass.

Every test works on the real database: a SQLite state directory copied and restored with
shutil, or a PostgreSQL schema dumped with pg_dump and restored with psql (the `backing`
fixture runs each test against both); the database is tampered with through a raw connection,
the counter lives outside the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from netshield.cas.auditlog import entry_hash
from netshield.cas.counter import MonotonicCounter
from netshield.cas.store import CasStore, read_audit_offline, verify_state
from netshield.errors import StateError
from netshield.reasons import Reason
from tests.store_support import Backing
from tests.store_support import populate as fill

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RESTORE = {
    "sqlite": "restore the newest copy of the state directory",
    "postgres": "restore the newest dump of the database",
}


@pytest.fixture(autouse=True)
def private_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def counter(b: Backing) -> MonotonicCounter:
    return MonotonicCounter(b.root / "outside" / "cas.counter")


def open_store(b: Backing, *, adopt_counter: bool = False) -> CasStore:
    return b.open(now=T0, counter=counter(b), adopt_counter=adopt_counter)


def offline(b: Backing) -> dict[str, Any]:
    """How the offline tools name this database."""
    if b.kind == "sqlite":
        return {}
    assert b.cluster is not None
    return {"database": b.url, "password": b.cluster.password}


def populate(b: Backing, events: int = 4) -> None:
    """State: policy (entry 2), platform revocation (3), issued cert (4), then plain events."""
    with open_store(b) as store:
        fill(store, now=T0, events=events)


def refused(b: Backing, **kwargs: bool) -> StateError:
    with pytest.raises(StateError) as info:
        open_store(b, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value


# --- rollback -------------------------------------------------------------------------------


def test_normal_reopen_after_changes_succeeds(backing: Backing) -> None:
    populate(backing)
    with open_store(backing) as store:
        store.revoke(kind="platform", target="p2", now=T0, actor="alice")
    with open_store(backing) as store:
        assert store.revoked_platforms() == frozenset({"p1", "p2"})
        assert store.verify_audit() == []


def test_restored_older_copy_of_the_database_is_refused_as_rolled_back(backing: Backing) -> None:
    populate(backing, events=0)
    backing.save("backup")
    with open_store(backing) as store:
        store.revoke(kind="platform", target="p2", now=T0, actor="alice")
    backing.restore("backup")

    err = refused(backing)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert str(err).startswith(
        f"{backing.location} is at audit entry 4 but its monotonic counter "
        f"{counter(backing).path} says 5: the state was rolled back"
    )
    assert RESTORE[backing.kind] in str(err)


def test_restored_copy_with_a_forged_continuation_is_refused_as_replaced(
    backing: Backing, tmp_path: Path
) -> None:
    populate(backing, events=0)
    backing.save("backup")
    with open_store(backing) as store:
        store.revoke(kind="platform", target="p2", now=T0, actor="alice")
    backing.restore("backup")
    # The adversary brings the old copy up to the counter's seq with other entries.
    other = MonotonicCounter(tmp_path / "elsewhere.counter")
    backing.open(now=T0, counter=other, adopt_counter=True).close()

    err = refused(backing)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert "audit entry 5 in" in str(err)
    assert "is not the one its monotonic counter" in str(err)


def test_log_one_entry_ahead_of_the_counter_is_a_crash_and_catches_the_counter_up(
    backing: Backing,
) -> None:
    populate(backing, events=0)
    saved = counter(backing).path.read_bytes()
    with open_store(backing) as store:
        store.audit("test.event", {}, now=T0)
        head = store.audit_head()
    counter(backing).path.write_bytes(saved)  # as if the process died before the counter write
    with open_store(backing) as store:
        assert counter(backing).read() == head == store.audit_head()


def test_deleted_database_is_refused_by_an_explicit_counter(backing: Backing) -> None:
    populate(backing)
    backing.delete()
    err = refused(backing)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert "is at audit entry 1 but its monotonic counter" in str(err)
    refused(backing)  # and it stays refused: the new empty state is not adopted silently


def test_missing_counter_with_a_non_empty_database_is_refused(backing: Backing) -> None:
    populate(backing)
    counter(backing).path.unlink()
    err = refused(backing)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert str(counter(backing).path) in str(err)
    assert "--adopt-counter" in str(err)


def test_missing_counter_is_adopted_with_adopt_counter_and_the_adoption_audited(
    backing: Backing,
) -> None:
    populate(backing)
    counter(backing).path.unlink()
    with open_store(backing, adopt_counter=True) as store:
        entry = store.audit_entries()[-1]
        assert entry.event == "state.adopt_counter"
        assert counter(backing).read() == store.audit_head()
    open_store(backing).close()


def test_deleted_database_is_refused_with_the_default_counter(backing: Backing) -> None:
    backing.open(now=T0).close()
    backing.delete()
    with pytest.raises(StateError) as info:
        backing.open(now=T0)
    assert f"{backing.location} is missing but" in str(info.value)
    assert "deleted or rolled back to before it was created" in str(info.value)


def test_fresh_state_directory_opens_with_the_default_counter(tmp_path: Path) -> None:
    CasStore.open(state(tmp_path), now=T0).close()
    with CasStore.open(tmp_path / "another", now=T0) as store:
        assert store.counter_path.parent == tmp_path / "xdg" / "netshield"
    with CasStore.open(state(tmp_path), now=T0) as store:
        assert store.verify_audit() == []


# --- audit tampering through a raw connection ----------------------------------------------------


def edit_entry(conn: Any) -> None:
    conn.execute("UPDATE audit SET data = ? WHERE seq = 5", (json.dumps({"i": 99}),))


def edit_entry_and_rehash(conn: Any) -> None:
    seq, ts, event, prev_hash = conn.execute(
        "SELECT seq, ts, event, prev_hash FROM audit WHERE seq = 5"
    ).fetchone()
    data = {"i": 99}
    conn.execute(
        "UPDATE audit SET data = ?, hash = ? WHERE seq = 5",
        (json.dumps(data), entry_hash(seq, ts, event, data, prev_hash)),
    )


def delete_last_rows(conn: Any) -> None:
    conn.execute("DELETE FROM audit WHERE seq > 5")


def delete_middle_row(conn: Any) -> None:
    conn.execute("DELETE FROM audit WHERE seq = 5")


def swap_rows(conn: Any) -> None:
    cols = "ts, event, data, prev_hash, hash"
    row5 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 5").fetchone()
    row7 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 7").fetchone()
    sets = "ts = ?, event = ?, data = ?, prev_hash = ?, hash = ?"
    conn.execute(f"UPDATE audit SET {sets} WHERE seq = 5", row7)
    conn.execute(f"UPDATE audit SET {sets} WHERE seq = 7", row5)


def replace_entry_with_garbage(conn: Any) -> None:
    conn.execute("UPDATE audit SET data = '{\"x\": NaN}' WHERE seq = 5")


def delete_revocation_row(conn: Any) -> None:
    conn.execute("DELETE FROM revocations WHERE target = 'p1'")


def move_issued_cert_to_another_service(conn: Any) -> None:
    conn.execute("UPDATE issued SET service = 'other'")


def edit_policy_text(conn: Any) -> None:
    conn.execute("UPDATE policies SET text = 'trust_domain: evil.org\n'")


TAMPERING: list[tuple[Callable[[Any], None], Reason, str]] = [
    (edit_entry, Reason.AUDIT_CHAIN_BROKEN, "entry 5: hash does not match its content (edited)"),
    (
        edit_entry_and_rehash,
        Reason.AUDIT_CHAIN_BROKEN,
        "entry 6 does not link to entry 5 (reordered or replaced)",
    ),
    (delete_last_rows, Reason.STATE_ROLLED_BACK, "is at audit entry 5 but its monotonic counter"),
    (delete_middle_row, Reason.AUDIT_CHAIN_BROKEN, "entry 6 follows entry 4 (entry 5 missing)"),
    (
        swap_rows,
        Reason.AUDIT_CHAIN_BROKEN,
        "entry 5 holds the content of entry 7 (rows swapped or moved)",
    ),
    (replace_entry_with_garbage, Reason.AUDIT_CHAIN_BROKEN, "audit row 5 is not an audit entry"),
    (
        delete_revocation_row,
        Reason.AUDIT_CHAIN_BROKEN,
        "revocation 1 (platform p1, audit entry 3) is missing from the revocations table",
    ),
    (edit_policy_text, Reason.AUDIT_CHAIN_BROKEN, "policy version 1 does not match audit entry 2"),
    (
        move_issued_cert_to_another_service,
        Reason.AUDIT_CHAIN_BROKEN,
        "issued certificate 2a does not match audit entry 4 (edited)",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "reason", "sentence"), TAMPERING, ids=[t[0].__name__ for t in TAMPERING]
)
def test_tampered_state_is_refused_with_a_specific_sentence(
    backing: Backing,
    tamper: Callable[[Any], None],
    reason: Reason,
    sentence: str,
) -> None:
    populate(backing)
    conn = backing.raw()
    tamper(conn)
    conn.close()
    err = refused(backing)
    assert err.reason is reason
    assert sentence in str(err)
    problems = verify_state(backing.state_dir, counter(backing).path, **offline(backing))
    assert any(sentence in p or "truncated" in p for p in problems)


def test_untampered_state_reopens_and_verifies_clean(backing: Backing) -> None:
    populate(backing)
    conn = backing.raw()  # the same raw access, reading only
    assert conn.execute("SELECT count(*) FROM audit").fetchone() == (8,)
    conn.close()
    with open_store(backing) as store:
        assert store.verify_audit() == []
    assert verify_state(backing.state_dir, counter(backing).path, **offline(backing)) == []


def test_tampering_while_running_shows_in_verify_audit(backing: Backing) -> None:
    populate(backing)
    with open_store(backing) as store:
        assert store.verify_audit() == []
        conn = backing.raw()
        edit_entry(conn)
        conn.close()
        assert store.verify_audit() == ["entry 5: hash does not match its content (edited)"]


# --- offline verification -------------------------------------------------------------------


def snapshot(*dirs: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def test_verify_state_reports_a_rollback_and_writes_nothing(backing: Backing) -> None:
    populate(backing)
    backing.save("backup")
    with open_store(backing) as store:
        store.audit("test.event", {}, now=T0)
    backing.restore("backup")
    before = snapshot(backing.state_dir, backing.root / "outside")
    problems = verify_state(backing.state_dir, counter(backing).path, **offline(backing))
    assert problems == ["log ends at entry 8 but the monotonic counter says 9 (truncated)"]
    assert snapshot(backing.state_dir, backing.root / "outside") == before


def test_verify_state_names_a_missing_database_or_counter(backing: Backing) -> None:
    missing = (
        f"{backing.location} does not exist"
        if backing.kind == "sqlite"
        else f"{backing.location} holds no CAS state"
    )
    assert verify_state(backing.state_dir, **offline(backing)) == [missing]
    populate(backing)
    counter(backing).path.unlink()
    assert verify_state(backing.state_dir, counter(backing).path, **offline(backing)) == [
        f"the monotonic counter {counter(backing).path} is missing"
    ]


def test_garbage_database_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    state(tmp_path).mkdir()
    (state(tmp_path) / "cas.db").write_bytes(b"not a database" * 100)
    err = refused(Backing("sqlite", tmp_path))
    assert f"{state(tmp_path) / 'cas.db'} is not a readable CAS database" in str(err)
    assert err.reason is Reason.STATE_UNAVAILABLE  # not a rollback: the file is not a CAS database


def test_verify_state_reads_a_running_cas_through_its_wal(tmp_path: Path) -> None:
    b = Backing("sqlite", tmp_path)
    populate(b)
    with open_store(b) as store:
        store.audit("test.event", {"late": True}, now=T0)
        assert (state(tmp_path) / "cas.db-wal").exists()
        assert verify_state(state(tmp_path), counter(b).path) == []


def test_read_audit_offline_returns_the_log_and_the_counter_value(backing: Backing) -> None:
    populate(backing)
    with open_store(backing) as store:
        expected = store.audit_entries()
        head = store.audit_head()
    entries, value, path = read_audit_offline(
        backing.state_dir, counter(backing), **offline(backing)
    )
    assert (entries, value, path) == (expected, head, counter(backing).path)


def test_read_audit_offline_refuses_a_missing_database(backing: Backing) -> None:
    with pytest.raises(StateError, match=r"does not exist|holds no CAS state"):
        read_audit_offline(backing.state_dir, counter(backing), **offline(backing))
