"""Signed audit checkpoints in the CAS state: an adversary with the database *and* the counter
(one volume snapshot, or write access to both) can rewrite the hash chain and the counter so
that they agree, which an unkeyed chain cannot notice; without the CAS's checkpoint key the
checkpoints give it away. Each test runs against SQLite and PostgreSQL (the `backing`
fixture), tampering through a raw connection as such an adversary would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from netshield.cas.counter import MonotonicCounter
from netshield.cas.store import CasStore, read_audit_offline, verify_state
from netshield.cas.store.integrity import witnessed_problems
from netshield.cas.store.migrate import copy_state
from netshield.errors import StateError
from netshield.pki.ca import CertificateAuthority, create_root_ca
from netshield.pki.checkpoint import Checkpoint, CheckpointSigner, verify_checkpoint
from netshield.reasons import Reason
from tests.pg_support import PgCluster
from tests.store_support import POLICY, Backing, rewrite_from, write_counter
from tests.store_support import populate as fill

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TD = "example.org"


@pytest.fixture(autouse=True)
def private_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def mesh() -> CertificateAuthority:
    return create_root_ca(f"netshield mesh CA ({TD})", now=T0 - timedelta(days=1))


def counter(b: Backing) -> MonotonicCounter:
    return MonotonicCounter(b.root / "outside" / "cas.counter")


def open_signed(b: Backing, mesh: CertificateAuthority, **kwargs: Any) -> CasStore:
    return b.open(now=T0, counter=counter(b), signer=CheckpointSigner(mesh, TD), **kwargs)


def offline(b: Backing) -> dict[str, Any]:
    if b.kind == "sqlite":
        return {}
    assert b.cluster is not None
    return {"database": b.url, "password": b.cluster.password}


def populate(b: Backing, mesh: CertificateAuthority) -> None:
    """Entries: create (1), policy (2), revocation (3), issued (4), then events 5..8."""
    with open_signed(b, mesh) as store:
        fill(store, now=T0)


def set_counter(b: Backing, seq: int, head: str) -> None:
    """What the adversary writes into the counter file so that it agrees with the log."""
    write_counter(counter(b).path, seq, head)


def refused(b: Backing, mesh: CertificateAuthority, **kwargs: Any) -> StateError:
    with pytest.raises(StateError) as info:
        open_signed(b, mesh, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


def test_every_audit_entry_gets_a_signed_checkpoint_in_its_own_transaction(
    backing: Backing, mesh: CertificateAuthority
) -> None:
    populate(backing, mesh)
    conn = backing.raw()
    assert conn.execute("SELECT count(*) FROM checkpoints").fetchone() == (8,)
    assert conn.execute("SELECT count(*) FROM checkpoint_signers").fetchone() == (1,)
    conn.close()
    with open_signed(backing, mesh) as store:
        head, newest = store.audit_head(), store.checkpoint()
        assert newest is not None
        checkpoint = verify_checkpoint(newest, [mesh.cert], trust_domain=TD)
        assert (checkpoint.seq, checkpoint.head, checkpoint.state_id) == (
            head.seq,
            head.head,
            store.state_id,
        )
        versions = [store.checkpoint(s).checkpoint.policy_version for s in (1, 2, 8)]  # type: ignore[union-attr]
        assert versions == [0, 1, 1]
        assert store.checkpoint(99) is None
        assert store.verify_audit() == []
    bundle = {"bundle": [mesh.cert]}
    assert (
        verify_state(backing.state_dir, counter(backing).path, **offline(backing), **bundle) == []
    )


def test_a_chain_rewritten_with_its_counter_is_refused_where_an_unkeyed_check_passes(
    backing: Backing, mesh: CertificateAuthority
) -> None:
    populate(backing, mesh)
    conn = backing.raw()
    set_counter(backing, *rewrite_from(conn, 5))
    conn.close()
    err = refused(backing, mesh)
    assert err.reason is Reason.AUDIT_CHAIN_BROKEN
    assert "audit entry 5 is not the entry the CAS signed in its checkpoint" in str(err)
    problems = verify_state(
        backing.state_dir, counter(backing).path, **offline(backing), bundle=[mesh.cert]
    )
    assert any("the chain was rewritten" in p for p in problems)
    # the twin: chain, rows and counter agree, so the unkeyed check alone cannot tell
    assert verify_state(backing.state_dir, counter(backing).path, **offline(backing)) == []


def test_a_rewritten_chain_without_its_checkpoints_is_refused(
    backing: Backing, mesh: CertificateAuthority
) -> None:
    populate(backing, mesh)
    conn = backing.raw()
    set_counter(backing, *rewrite_from(conn, 5))
    conn.execute("DELETE FROM checkpoints WHERE seq >= 5")
    conn.close()
    err = refused(backing, mesh)
    assert "audit entries 5-8 have no signed checkpoint: written without the CAS's" in str(err)


def test_checkpoints_forged_with_a_key_of_the_adversarys_own_are_refused(
    backing: Backing, mesh: CertificateAuthority
) -> None:
    populate(backing, mesh)
    with open_signed(backing, mesh) as store:
        state_id = store.state_id
    conn = backing.raw()
    last, head = rewrite_from(conn, 5)
    set_counter(backing, last, head)
    own = CheckpointSigner(create_root_ca(f"netshield mesh CA ({TD})", now=T0), TD)
    ts = conn.execute("SELECT ts FROM audit WHERE seq = ?", (last,)).fetchone()[0]
    forged = own.sign(Checkpoint(state_id, last, head, 1, ts))
    conn.execute("DELETE FROM checkpoints WHERE seq >= 5")
    conn.execute(
        "INSERT INTO checkpoint_signers (fingerprint, pem) VALUES (?, ?)",
        (forged.signer_fingerprint, forged.signer_pem()),
    )
    conn.execute(
        "INSERT INTO checkpoints (seq, body, signer) VALUES (?, ?, ?)",
        (last, forged.body_text(), forged.signer_fingerprint),
    )
    conn.close()
    err = refused(backing, mesh)
    assert "was not issued by the mesh CA" in str(err)


def test_a_truncated_log_and_counter_leave_checkpoints_behind_that_give_them_away(
    backing: Backing, mesh: CertificateAuthority
) -> None:
    populate(backing, mesh)
    conn = backing.raw()
    conn.execute("DELETE FROM audit WHERE seq > 5")
    seq, head = conn.execute("SELECT seq, hash FROM audit WHERE seq = 5").fetchone()
    conn.close()
    set_counter(backing, seq, head)
    err = refused(backing, mesh)
    assert "checkpoint 6 vouches for audit entry 6, which the log no longer holds" in str(err)


def test_log_checkpoints_and_counter_cut_back_together_are_an_older_copy_only_a_witness_sees(
    backing: Backing, mesh: CertificateAuthority
) -> None:
    """Removing the newest entries, their checkpoints and moving the counter back is the same
    as restoring an older snapshot of both volumes: every check of the state passes. A sidecar
    that saw the newer head (its witness file) is what catches it."""
    populate(backing, mesh)
    with open_signed(backing, mesh) as store:
        newest = store.checkpoint()
    assert newest is not None
    conn = backing.raw()
    conn.execute("DELETE FROM audit WHERE seq > 5")
    conn.execute("DELETE FROM checkpoints WHERE seq > 5")
    seq, head = conn.execute("SELECT seq, hash FROM audit WHERE seq = 5").fetchone()
    conn.close()
    set_counter(backing, seq, head)
    with open_signed(backing, mesh) as store:
        assert store.verify_audit() == []
    entries, _value, _path = read_audit_offline(
        backing.state_dir, counter(backing), **offline(backing)
    )
    assert witnessed_problems(entries, newest.checkpoint, "witness w.json") == [
        "log ends at entry 5 but witness w.json saw entry 8 signed by the CAS "
        "(rolled back, together with its counter)"
    ]
    with open_signed(backing, mesh) as store:  # the twin: a witness of entry 5 agrees
        at_five = store.checkpoint(5)
    assert at_five is not None
    assert witnessed_problems(entries, at_five.checkpoint, "witness w.json") == []


@pytest.mark.parametrize("schema", [1, 3])
def test_a_log_the_cas_never_signed_is_adopted_only_on_request(
    backing: Backing, mesh: CertificateAuthority, schema: int
) -> None:
    """A state of schema version 1 (before checkpoint tables) or one written by a netshield
    without a checkpoint key: nothing but the counter vouches for it."""
    with backing.open(now=T0, counter=counter(backing)) as store:  # no signer
        store.apply_policy(POLICY, previous_hash=None, now=T0, actor="alice")
    if schema == 1:
        conn = backing.raw()
        for statement in (
            "DROP INDEX audit_event",
            "DROP TABLE checkpoints",
            "DROP TABLE checkpoint_signers",
            "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
        ):
            conn.execute(statement)
        conn.close()
    err = refused(backing, mesh)
    assert err.reason is Reason.AUDIT_CHAIN_BROKEN
    assert "audit entry 2 has no signed checkpoint: the state was written before" in str(err)
    assert "--adopt-unsigned-history" in str(err)
    problems = verify_state(
        backing.state_dir, counter(backing).path, **offline(backing), bundle=[mesh.cert]
    )
    assert any("audit entry 2 has no signed checkpoint" in p for p in problems), problems
    with open_signed(backing, mesh, adopt_unsigned=True) as store:
        events = [e.event for e in store.audit_entries(since=2)]
        assert events == (["state.upgrade"] if schema == 1 else []) + ["state.adopt_unsigned"]
        assert store.checkpoint() is not None
    with open_signed(backing, mesh) as store:  # the twin: from now on a plain signed state
        assert store.verify_audit() == []
        store.audit("test.event", {"after": "adoption"}, now=T0)
    with open_signed(backing, mesh) as store:
        assert store.verify_audit() == []


def test_entries_of_offline_tools_may_follow_the_newest_checkpoint(
    backing: Backing, mesh: CertificateAuthority
) -> None:
    """`cas migrate` has no checkpoint key: a state it created, or the upgrade and migration
    entries it appends, open as signed states; a decision appended without the key does not."""
    with backing.open(now=T0, counter=counter(backing)) as store:  # as `cas migrate` creates
        assert [e.event for e in store.audit_entries()] == ["state.create"]
    with open_signed(backing, mesh) as store:
        store.apply_policy(POLICY, previous_hash=None, now=T0, actor="alice")
        assert store.verify_audit() == []
    with backing.open(now=T0, counter=counter(backing)) as store:  # no signer: a decision
        store.revoke(kind="platform", target="p1", now=T0, actor="alice")
    err = refused(backing, mesh)
    assert "audit entry 3 has no signed checkpoint: written without" in str(err)


def test_a_signed_state_moved_into_postgresql_keeps_the_checkpoints_sidecars_remember(
    tmp_path: Path, mesh: CertificateAuthority, pg_cluster: PgCluster, pg_schema: str
) -> None:
    """`cas migrate --from-state` has no checkpoint key: it carries the CAS's checkpoints over,
    so the moved state opens signed and a sidecar's witness of an old entry still matches."""
    source = Backing("sqlite", tmp_path / "sqlite")
    target = Backing("postgres", tmp_path / "pg", pg_cluster, pg_schema)
    populate(source, mesh)
    with open_signed(source, mesh) as store:
        seen = store.checkpoint(5)
    assert seen is not None
    moved = copy_state(
        source.state_dir,
        database=target.url,
        password=pg_cluster.password,
        counter=counter(source),
        now=T0,
    )
    moved.close()
    with target.open(now=T0, counter=counter(source), signer=CheckpointSigner(mesh, TD)) as store:
        assert store.verify_audit() == []
        assert store.checkpoint(5) == seen  # the one a sidecar may remember
        assert store.audit_entries()[-1].event == "state.migrate"
        store.audit("test.event", {"after": "move"}, now=T0)  # signed from now on
        newest = store.checkpoint()
        assert newest is not None and newest.checkpoint.seq == store.audit_head().seq
