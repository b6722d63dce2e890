"""AM7.1 disk rollback and tampering: CasStore.open fails closed with one sentence, twins pass.

Every test works on real files: the state directory is copied and restored with shutil, the
database is tampered with through a raw sqlite3 connection, the counter lives outside the state.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from netshield.cas.auditlog import entry_hash
from netshield.cas.counter import MonotonicCounter
from netshield.cas.store import CasStore, read_audit_offline, verify_state
from netshield.errors import StateError
from netshield.reasons import Reason

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = "trust_domain: example.org\n"


@pytest.fixture(autouse=True)
def private_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def counter(tmp_path: Path) -> MonotonicCounter:
    return MonotonicCounter(tmp_path / "outside" / "cas.counter")


def open_store(tmp_path: Path, *, adopt_counter: bool = False) -> CasStore:
    return CasStore.open(
        state(tmp_path), counter=counter(tmp_path), adopt_counter=adopt_counter, now=T0
    )


def populate(tmp_path: Path, events: int = 4) -> None:
    """State: policy (entry 2), platform revocation (3), issued cert (4), then plain events."""
    with open_store(tmp_path) as store:
        store.apply_policy(POLICY, previous_hash=None, now=T0, actor="alice")
        store.revoke(kind="platform", target="p1", now=T0, actor="alice")
        store.record_issued(
            serial=0x2A,
            service="orders",
            platform_id="p2",
            measurement="ab" * 32,
            not_after=T0 + timedelta(minutes=10),
            policy_version=1,
            epoch=1,
            now=T0,
            fingerprint="cd" * 32,
        )
        for i in range(events):
            store.audit("test.event", {"i": i}, now=T0 + timedelta(seconds=i))


def raw(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(state(tmp_path) / "cas.db", isolation_level=None)
    return conn


def refused(tmp_path: Path, **kwargs: bool) -> StateError:
    with pytest.raises(StateError) as info:
        open_store(tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value


# --- rollback -------------------------------------------------------------------------------


def test_normal_reopen_after_changes_succeeds(tmp_path: Path) -> None:
    populate(tmp_path)
    with open_store(tmp_path) as store:
        store.revoke(kind="platform", target="p2", now=T0, actor="alice")
    with open_store(tmp_path) as store:
        assert store.revoked_platforms() == frozenset({"p1", "p2"})
        assert store.verify_audit() == []


def test_restored_copy_of_the_state_directory_is_refused_as_rolled_back(tmp_path: Path) -> None:
    populate(tmp_path, events=0)
    backup = tmp_path / "backup"
    shutil.copytree(state(tmp_path), backup)
    with open_store(tmp_path) as store:
        store.revoke(kind="platform", target="p2", now=T0, actor="alice")
    shutil.rmtree(state(tmp_path))
    shutil.copytree(backup, state(tmp_path))

    err = refused(tmp_path)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert str(err).startswith(
        f"{state(tmp_path) / 'cas.db'} is at audit entry 4 but its monotonic counter "
        f"{counter(tmp_path).path} says 5: the state was rolled back"
    )
    assert "restore the newest copy of the state directory" in str(err)


def test_restored_copy_with_a_forged_continuation_is_refused_as_replaced(
    tmp_path: Path,
) -> None:
    populate(tmp_path, events=0)
    backup = tmp_path / "backup"
    shutil.copytree(state(tmp_path), backup)
    with open_store(tmp_path) as store:
        store.revoke(kind="platform", target="p2", now=T0, actor="alice")
    shutil.rmtree(state(tmp_path))
    shutil.copytree(backup, state(tmp_path))
    # The adversary brings the old copy up to the counter's seq with other entries.
    other = MonotonicCounter(tmp_path / "elsewhere.counter")
    CasStore.open(state(tmp_path), counter=other, adopt_counter=True, now=T0).close()

    err = refused(tmp_path)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert "audit entry 5 in" in str(err)
    assert "is not the one its monotonic counter" in str(err)


def test_log_one_entry_ahead_of_the_counter_is_a_crash_and_catches_the_counter_up(
    tmp_path: Path,
) -> None:
    populate(tmp_path, events=0)
    saved = counter(tmp_path).path.read_bytes()
    with open_store(tmp_path) as store:
        store.audit("test.event", {}, now=T0)
        head = store.audit_head()
    counter(tmp_path).path.write_bytes(saved)  # as if the process died before the counter write
    with open_store(tmp_path) as store:
        assert counter(tmp_path).read() == head == store.audit_head()


def test_deleted_database_is_refused_by_an_explicit_counter(tmp_path: Path) -> None:
    populate(tmp_path)
    for p in state(tmp_path).glob("cas.db*"):
        p.unlink()
    err = refused(tmp_path)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert "is at audit entry 1 but its monotonic counter" in str(err)
    refused(tmp_path)  # and it stays refused: the new empty state is not adopted silently


def test_missing_counter_with_a_non_empty_database_is_refused(tmp_path: Path) -> None:
    populate(tmp_path)
    counter(tmp_path).path.unlink()
    err = refused(tmp_path)
    assert err.reason is Reason.STATE_ROLLED_BACK
    assert str(counter(tmp_path).path) in str(err)
    assert "--adopt-counter" in str(err)


def test_missing_counter_is_adopted_with_adopt_counter_and_the_adoption_audited(
    tmp_path: Path,
) -> None:
    populate(tmp_path)
    counter(tmp_path).path.unlink()
    with open_store(tmp_path, adopt_counter=True) as store:
        entry = store.audit_entries()[-1]
        assert entry.event == "state.adopt_counter"
        assert counter(tmp_path).read() == store.audit_head()
    open_store(tmp_path).close()


def test_deleted_database_is_refused_with_the_default_counter(tmp_path: Path) -> None:
    CasStore.open(state(tmp_path), now=T0).close()
    for p in state(tmp_path).glob("cas.db*"):
        p.unlink()
    with pytest.raises(StateError) as info:
        CasStore.open(state(tmp_path), now=T0)
    assert "cas.db is missing but" in str(info.value)
    assert "deleted or rolled back to before it was created" in str(info.value)


def test_fresh_state_directory_opens_with_the_default_counter(tmp_path: Path) -> None:
    CasStore.open(state(tmp_path), now=T0).close()
    with CasStore.open(tmp_path / "another", now=T0) as store:
        assert store.counter_path.parent == tmp_path / "xdg" / "netshield"
    with CasStore.open(state(tmp_path), now=T0) as store:
        assert store.verify_audit() == []


# --- audit tampering through raw sqlite3 ----------------------------------------------------


def edit_entry(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET data = ? WHERE seq = 5", (json.dumps({"i": 99}),))


def edit_entry_and_rehash(conn: sqlite3.Connection) -> None:
    seq, ts, event, prev_hash = conn.execute(
        "SELECT seq, ts, event, prev_hash FROM audit WHERE seq = 5"
    ).fetchone()
    data = {"i": 99}
    conn.execute(
        "UPDATE audit SET data = ?, hash = ? WHERE seq = 5",
        (json.dumps(data), entry_hash(seq, ts, event, data, prev_hash)),
    )


def delete_last_rows(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit WHERE seq > 5")


def delete_middle_row(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM audit WHERE seq = 5")


def swap_rows(conn: sqlite3.Connection) -> None:
    cols = "ts, event, data, prev_hash, hash"
    row5 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 5").fetchone()
    row7 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 7").fetchone()
    sets = "ts = ?, event = ?, data = ?, prev_hash = ?, hash = ?"
    conn.execute(f"UPDATE audit SET {sets} WHERE seq = 5", row7)
    conn.execute(f"UPDATE audit SET {sets} WHERE seq = 7", row5)


def replace_entry_with_garbage(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE audit SET data = '{\"x\": NaN}' WHERE seq = 5")


def delete_revocation_row(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM revocations WHERE target = 'p1'")


def move_issued_cert_to_another_service(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE issued SET service = 'other'")


def edit_policy_text(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE policies SET text = 'trust_domain: evil.org\n'")


TAMPERING: list[tuple[Callable[[sqlite3.Connection], None], Reason, str]] = [
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
    tmp_path: Path,
    tamper: Callable[[sqlite3.Connection], None],
    reason: Reason,
    sentence: str,
) -> None:
    populate(tmp_path)
    conn = raw(tmp_path)
    tamper(conn)
    conn.close()
    err = refused(tmp_path)
    assert err.reason is reason
    assert sentence in str(err)
    assert any(
        sentence in p or "truncated" in p
        for p in verify_state(state(tmp_path), counter(tmp_path).path)
    )


def test_untampered_state_reopens_and_verifies_clean(tmp_path: Path) -> None:
    populate(tmp_path)
    conn = raw(tmp_path)  # the same raw access, reading only
    assert conn.execute("SELECT count(*) FROM audit").fetchone() == (8,)
    conn.close()
    with open_store(tmp_path) as store:
        assert store.verify_audit() == []
    assert verify_state(state(tmp_path), counter(tmp_path).path) == []


def test_tampering_while_running_shows_in_verify_audit(tmp_path: Path) -> None:
    populate(tmp_path)
    with open_store(tmp_path) as store:
        assert store.verify_audit() == []
        conn = raw(tmp_path)
        edit_entry(conn)
        conn.close()
        assert store.verify_audit() == ["entry 5: hash does not match its content (edited)"]


# --- offline verification -------------------------------------------------------------------


def snapshot(*dirs: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def test_verify_state_reports_a_rollback_and_writes_nothing(tmp_path: Path) -> None:
    populate(tmp_path)
    backup = tmp_path / "backup"
    shutil.copytree(state(tmp_path), backup)
    with open_store(tmp_path) as store:
        store.audit("test.event", {}, now=T0)
    shutil.rmtree(state(tmp_path))
    shutil.copytree(backup, state(tmp_path))
    before = snapshot(state(tmp_path), tmp_path / "outside")
    problems = verify_state(state(tmp_path), counter(tmp_path).path)
    assert problems == ["log ends at entry 8 but the monotonic counter says 9 (truncated)"]
    assert snapshot(state(tmp_path), tmp_path / "outside") == before


def test_verify_state_names_a_missing_database_or_counter(tmp_path: Path) -> None:
    assert verify_state(state(tmp_path)) == [f"{state(tmp_path) / 'cas.db'} does not exist"]
    populate(tmp_path)
    counter(tmp_path).path.unlink()
    assert verify_state(state(tmp_path), counter(tmp_path).path) == [
        f"the monotonic counter {counter(tmp_path).path} is missing"
    ]


def test_garbage_database_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    state(tmp_path).mkdir()
    (state(tmp_path) / "cas.db").write_bytes(b"not a database" * 100)
    err = refused(tmp_path)
    assert f"{state(tmp_path) / 'cas.db'} is not a readable CAS database" in str(err)
    assert err.reason is Reason.STATE_UNAVAILABLE  # not a rollback: the file is not a CAS database


def test_verify_state_reads_a_running_cas_through_its_wal(tmp_path: Path) -> None:
    populate(tmp_path)
    with open_store(tmp_path) as store:
        store.audit("test.event", {"late": True}, now=T0)
        assert (state(tmp_path) / "cas.db-wal").exists()
        assert verify_state(state(tmp_path), counter(tmp_path).path) == []


def test_read_audit_offline_returns_the_log_and_the_counter_value(tmp_path: Path) -> None:
    populate(tmp_path)
    with open_store(tmp_path) as store:
        expected = store.audit_entries()
        head = store.audit_head()
    entries, value, path = read_audit_offline(state(tmp_path), counter(tmp_path))
    assert (entries, value, path) == (expected, head, counter(tmp_path).path)


def test_read_audit_offline_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"cas\.db does not exist"):
        read_audit_offline(state(tmp_path), counter(tmp_path))
