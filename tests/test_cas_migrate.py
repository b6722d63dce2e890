"""`netshield cas migrate` for real: versioned schemas created and upgraded on both backends, and
a SQLite state moved into PostgreSQL with its audit chain, its state id and its witness."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from netshield.cas.counter import MonotonicCounter
from netshield.cas.store import SCHEMA_VERSION, CasStore
from netshield.errors import StateError
from netshield.reasons import Reason
from tests.pg_support import PgCluster
from tests.store_support import POLICY, Backing, record_cert
from tests.support import netshield_cmd

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def private_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def counter(root: Path) -> MonotonicCounter:
    return MonotonicCounter(root / "outside" / "cas.counter")


def populate(store: CasStore) -> None:
    store.apply_policy(POLICY, previous_hash=None, now=T0, actor="alice")
    store.revoke(kind="platform", target="p1", now=T0, actor="alice")
    for serial in (0x2A, 0x2B):
        record_cert(store, serial, now=T0)
    store.revoke(kind="instance", target="2b", now=T0, actor="alice")


def migrate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        netshield_cmd("cas", "migrate", *args), capture_output=True, text=True, timeout=120, env=env
    )


def db_args(b: Backing) -> list[str]:
    if b.kind == "sqlite":
        return ["--state", str(b.state_dir)]
    assert b.cluster is not None
    pw = b.root / "db-password"
    pw.parent.mkdir(parents=True, exist_ok=True)
    pw.write_text(b.cluster.password + "\n")
    return ["--database", b.url, "--database-password-file", str(pw)]


def make_v1(b: Backing) -> None:
    """Turn the state into what a netshield of schema version 1 wrote."""
    raw = b.raw()
    raw.execute("DROP INDEX audit_event")
    raw.execute("DROP TABLE checkpoints")  # schema version 3
    raw.execute("DROP TABLE checkpoint_signers")
    raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    raw.close()


# --- versioned schema -------------------------------------------------------------------------


def test_migrate_creates_then_leaves_a_current_schema_alone(
    backing: Backing, tmp_path: Path
) -> None:
    c = ["--counter", str(counter(tmp_path).path)]
    first = migrate(*db_args(backing), *c)
    assert first.returncode == 0, first.stderr
    assert f"schema version {SCHEMA_VERSION} (created)" in first.stdout
    assert backing.location in first.stdout
    again = migrate(*db_args(backing), *c)
    assert again.returncode == 0, again.stderr
    assert "(already current)" in again.stdout
    with backing.open(now=T0, counter=counter(tmp_path)) as store:
        assert [e.event for e in store.audit_entries()] == ["state.create"]


def test_an_older_schema_is_upgraded_audited_and_indexed(backing: Backing, tmp_path: Path) -> None:
    with backing.open(now=T0, counter=counter(tmp_path)) as store:
        populate(store)
    make_v1(backing)
    done = migrate(*db_args(backing), "--counter", str(counter(tmp_path).path))
    assert done.returncode == 0, done.stderr
    assert f"schema version {SCHEMA_VERSION} (upgraded from schema version 1)" in done.stdout
    with backing.open(now=T0, counter=counter(tmp_path)) as store:
        last = store.audit_entries()[-1]
        assert (last.event, last.data) == (
            "state.upgrade",
            {"from_version": 1, "to_version": SCHEMA_VERSION},
        )
        assert store.verify_audit() == []
        feed, _ = store.feed_entries(0)  # the feed reads through the new index
        assert [e.event for e in feed] == ["policy.apply", "revoke", "revoke"]
    raw = backing.raw()
    index = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'audit_event'"
        if backing.kind == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE indexname = 'audit_event' "
        f"AND schemaname = '{backing.schema}'"
    )
    assert raw.execute(index).fetchall() == [("audit_event",)]
    raw.close()


def test_a_schema_newer_than_this_netshield_is_refused(backing: Backing, tmp_path: Path) -> None:
    backing.open(now=T0, counter=counter(tmp_path)).close()
    raw = backing.raw()
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StateError) as info:
        backing.open(now=T0, counter=counter(tmp_path))
    assert "has schema version '99' but this netshield reads versions 1 to" in str(info.value)
    done = migrate(*db_args(backing), "--counter", str(counter(tmp_path).path))
    assert done.returncode == 2
    assert "run the netshield version that wrote it" in done.stderr


def test_migrate_refuses_a_rolled_back_state_like_serve(backing: Backing, tmp_path: Path) -> None:
    with backing.open(now=T0, counter=counter(tmp_path)) as store:
        populate(store)
    backing.save("old")
    with backing.open(now=T0, counter=counter(tmp_path)) as store:
        store.audit("test.event", {}, now=T0)
    backing.restore("old")
    done = migrate(*db_args(backing), "--counter", str(counter(tmp_path).path))
    assert done.returncode == 2
    assert "the state was rolled back" in done.stderr


# --- SQLite into PostgreSQL -------------------------------------------------------------------


@pytest.fixture
def target(tmp_path: Path, pg_cluster: PgCluster, pg_schema: str) -> Backing:
    return Backing("postgres", tmp_path / "pg", pg_cluster, pg_schema)


def test_a_sqlite_state_moves_into_postgresql_with_its_chain_and_witness(
    tmp_path: Path, target: Backing
) -> None:
    source = tmp_path / "state"
    with CasStore.open(source, counter=counter(tmp_path), now=T0) as store:
        populate(store)
        entries, issued = store.audit_entries(), store.list_issued()
        revocations, policy = store.revocations(), store.current_policy()
    done = migrate(
        "--from-state", str(source), *db_args(target), "--counter", str(counter(tmp_path).path)
    )
    assert done.returncode == 0, done.stderr
    assert "moved from" in done.stdout

    # the copy opens on the same witness, without adopting anything
    with target.open(now=T0, counter=counter(tmp_path)) as moved:
        copied = moved.audit_entries()
        assert copied[: len(entries)] == entries
        assert copied[-1].event == "state.migrate"
        assert copied[-1].data["from"] == str(source / "cas.db")
        assert moved.list_issued() == issued
        assert moved.revocations() == revocations
        assert moved.current_policy() == policy
        assert moved.is_serial_revoked(0x2B) and not moved.is_serial_revoked(0x2A)
        assert moved.verify_audit() == []
        assert counter(tmp_path).read() == moved.audit_head()

    # and the SQLite copy can never be started again as if it were current
    with pytest.raises(StateError) as info:
        CasStore.open(source, counter=counter(tmp_path), now=T0)
    assert info.value.reason is Reason.STATE_ROLLED_BACK


def test_moving_into_a_database_that_holds_a_state_is_refused(
    tmp_path: Path, target: Backing
) -> None:
    source = tmp_path / "state"
    with CasStore.open(source, counter=counter(tmp_path), now=T0) as store:
        populate(store)
    target.open(now=T0, counter=MonotonicCounter(tmp_path / "other.counter")).close()
    done = migrate(
        "--from-state", str(source), *db_args(target), "--counter", str(counter(tmp_path).path)
    )
    assert done.returncode == 2
    assert "migrate into an empty database" in done.stderr
    # the twin: the source is untouched and still opens as current
    with CasStore.open(source, counter=counter(tmp_path), now=T0) as store:
        assert store.verify_audit() == []


def test_moving_a_tampered_or_running_state_is_refused(tmp_path: Path, target: Backing) -> None:
    source = tmp_path / "state"
    with CasStore.open(source, counter=counter(tmp_path), now=T0) as store:
        populate(store)
        running = migrate(
            "--from-state", str(source), *db_args(target), "--counter", str(counter(tmp_path).path)
        )
        assert running.returncode == 2
        assert "is locked: another CAS is using" in running.stderr
    raw = Backing("sqlite", tmp_path).raw()
    raw.execute("UPDATE issued SET service = 'other'")
    raw.close()
    tampered = migrate(
        "--from-state", str(source), *db_args(target), "--counter", str(counter(tmp_path).path)
    )
    assert tampered.returncode == 2
    assert "does not match its audit log" in tampered.stderr
    raw_target = target.raw()
    tables = raw_target.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchone()
    raw_target.close()
    assert tables == (0,)  # nothing was written to the target
