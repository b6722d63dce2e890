"""CasStore on real SQLite files: nonces, policy chain, issued certs, revocations, audit."""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from netshield.cas.auditlog import GENESIS
from netshield.cas.counter import CounterValue, MonotonicCounter
from netshield.cas.store import CasStore, policy_text_hash
from netshield.errors import NetshieldError, StateError
from netshield.nonces import NonceStatus
from netshield.reasons import Reason
from tests.store_support import Backing

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)
MEASUREMENT = "ab" * 32
POLICY_1 = "trust_domain: example.org\n"
POLICY_2 = "trust_domain: example.org\n# v2\n"


@pytest.fixture(autouse=True)
def private_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def open_store(tmp_path: Path) -> CasStore:
    counter = MonotonicCounter(tmp_path / "outside" / "cas.counter")
    return CasStore.open(tmp_path / "state", counter=counter, now=T0)


@pytest.fixture
def store(backing: Backing) -> Iterator[CasStore]:
    """The store on each kind of database: SQLite, then PostgreSQL."""
    counter = MonotonicCounter(backing.root / "outside" / "cas.counter")
    with backing.open(now=T0, counter=counter) as s:
        yield s


def issue(store: CasStore, serial: int, service: str = "orders", platform: str = "p1") -> None:
    store.record_issued(
        serial=serial,
        service=service,
        platform_id=platform,
        measurement=MEASUREMENT,
        not_after=T0 + timedelta(minutes=10),
        policy_version=1,
        epoch=1,
        now=T0,
        fingerprint="cd" * 32,
    )


def counter_value(store: CasStore) -> CounterValue | None:
    return MonotonicCounter(store.counter_path).read()


# --- opening --------------------------------------------------------------------------------


def test_open_creates_the_state_with_its_counter_outside_the_state_directory(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path) as store:
        assert uuid.UUID(store.state_id)
        assert (tmp_path / "state" / "cas.db").is_file()
        assert not store.counter_path.is_relative_to(tmp_path / "state")
        [created] = store.audit_entries()
        assert created.event == "state.create"
        assert created.data["state_id"] == store.state_id
        assert counter_value(store) == store.audit_head() == CounterValue(1, created.hash)
        assert store.verify_audit() == []


def test_a_second_open_of_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    with open_store(tmp_path), pytest.raises(StateError, match=r"cas\.lock is locked"):
        open_store(tmp_path)


def test_the_state_directory_can_be_reopened_after_close(tmp_path: Path) -> None:
    with open_store(tmp_path) as first:
        state_id = first.state_id
    with open_store(tmp_path) as second:
        assert second.state_id == state_id


def test_a_closed_store_refuses_calls_and_close_is_idempotent(store: CasStore) -> None:
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.audit_head()


# --- nonces ---------------------------------------------------------------------------------
# Issued nonces are self-certifying (tests/test_nonces.py); the store keeps the used ones.
EXP = T0 + TTL


def used(store: CasStore, nonce: bytes, now: datetime = T0) -> NonceStatus:
    return store.use_nonce(nonce, expires_at=EXP, now=now)


def test_a_nonce_is_used_once(store: CasStore) -> None:
    nonce = secrets.token_bytes(32)
    assert used(store, nonce) is NonceStatus.VALID
    assert used(store, nonce, T0 + timedelta(seconds=1)) is NonceStatus.REUSED


@pytest.mark.parametrize("nonce", [b"short", b""])
def test_a_nonce_of_the_wrong_size_is_unknown(store: CasStore, nonce: bytes) -> None:
    assert used(store, nonce) is NonceStatus.UNKNOWN


def test_used_nonces_are_pruned_after_their_expiry(store: CasStore, backing: Backing) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    used(store, old)
    store.use_nonce(new, expires_at=EXP + timedelta(hours=2), now=EXP + timedelta(hours=1))
    raw = backing.raw()
    assert raw.execute("SELECT count(*) FROM nonces").fetchone() == (1,)
    raw.close()


def test_nonces_are_stored_hashed_and_not_audited(store: CasStore, backing: Backing) -> None:
    head = store.audit_head()
    nonce = secrets.token_bytes(32)
    used(store, nonce)
    assert store.audit_head() == head == counter_value(store)
    raw = backing.raw()
    stored = [str(r[0]) for r in raw.execute("SELECT digest FROM nonces").fetchall()]
    raw.close()
    assert stored == [hashlib.sha256(nonce).hexdigest()]
    if backing.kind == "sqlite":
        db = b"".join(p.read_bytes() for p in backing.state_dir.iterdir() if p.is_file())
        assert nonce not in db
        assert nonce.hex().encode() not in db


def test_concurrent_users_of_one_nonce_get_exactly_one_valid(store: CasStore) -> None:
    nonce = secrets.token_bytes(32)
    results = consume_concurrently(store, [nonce] * 20)
    assert sorted(results) == sorted([NonceStatus.VALID] + [NonceStatus.REUSED] * 19)


def test_concurrent_users_of_distinct_nonces_all_get_valid(store: CasStore) -> None:
    nonces = [secrets.token_bytes(32) for _ in range(20)]
    assert consume_concurrently(store, nonces) == [NonceStatus.VALID] * 20


def consume_concurrently(store: CasStore, nonces: list[bytes]) -> list[NonceStatus]:
    barrier = threading.Barrier(len(nonces))
    results: list[NonceStatus | None] = [None] * len(nonces)

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = used(store, nonces[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(nonces))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


# --- policy ---------------------------------------------------------------------------------


def test_first_policy_names_no_predecessor(store: CasStore) -> None:
    assert store.current_policy() is None
    stored = store.apply_policy(POLICY_1, previous_hash=None, now=T0, actor="alice")
    assert (stored.version, stored.hash, stored.text) == (1, policy_text_hash(POLICY_1), POLICY_1)
    assert stored.hash.startswith("sha256:")
    assert store.current_policy() == stored
    entry = store.audit_entries()[-1]
    assert entry.event == "policy.apply"
    assert entry.data == {
        "version": 1,
        "hash": stored.hash,
        "previous_hash": None,
        "actor": "alice",
    }
    assert counter_value(store) == store.audit_head()


def test_first_policy_naming_a_predecessor_is_refused(store: CasStore) -> None:
    with pytest.raises(NetshieldError) as info:
        store.apply_policy(POLICY_1, previous_hash="sha256:" + "0" * 64, now=T0, actor="alice")
    assert info.value.reason is Reason.POLICY_PREDECESSOR_MISMATCH
    assert "no policy has been applied yet" in str(info.value)


def test_policy_update_naming_the_current_hash_becomes_the_next_version(store: CasStore) -> None:
    first = store.apply_policy(POLICY_1, previous_hash=None, now=T0, actor="alice")
    second = store.apply_policy(POLICY_2, previous_hash=first.hash, now=T0, actor="bob")
    assert (second.version, second.previous_hash) == (2, first.hash)
    assert store.current_policy() == second
    assert store.policy_version(1) == first
    assert store.policy_version(3) is None


@pytest.mark.parametrize("previous", [None, "sha256:" + "0" * 64])
def test_policy_update_naming_another_predecessor_is_refused(
    store: CasStore, previous: str | None
) -> None:
    first = store.apply_policy(POLICY_1, previous_hash=None, now=T0, actor="alice")
    head = store.audit_head()
    with pytest.raises(NetshieldError) as info:
        store.apply_policy(POLICY_2, previous_hash=previous, now=T0, actor="bob")
    assert info.value.reason is Reason.POLICY_PREDECESSOR_MISMATCH
    assert f"the current policy (version 1) is {first.hash}" in str(info.value)
    assert store.current_policy() == first
    assert store.audit_head() == head


# --- issued certificates and denials --------------------------------------------------------


def test_issued_certificate_is_recorded_and_audited(store: CasStore) -> None:
    serial = 2**80 + 0xABC  # wider than 63 bits on purpose
    issue(store, serial)
    cert = store.issued(serial)
    assert cert is not None
    assert (cert.serial, cert.service, cert.platform_id) == (serial, "orders", "p1")
    assert cert.not_after == T0 + timedelta(minutes=10)
    entry = store.audit_entries()[-1]
    assert (entry.event, entry.data["serial"]) == ("attest.allow", format(serial, "x"))
    assert counter_value(store) == store.audit_head()


def test_unrecorded_serial_is_not_issued(store: CasStore) -> None:
    issue(store, 1)
    assert store.issued(2) is None


def test_list_issued_filters_by_service(store: CasStore) -> None:
    issue(store, 1, "orders")
    issue(store, 2, "frontend")
    issue(store, 3, "orders")
    assert [c.serial for c in store.list_issued()] == [1, 2, 3]
    assert [c.serial for c in store.list_issued("orders")] == [1, 3]


def test_denied_attestation_is_audited(store: CasStore) -> None:
    store.record_denied(
        reason="MEASUREMENT_NOT_ALLOWED",
        detail="the code changed",
        service="orders",
        platform_id="p1",
        measurement=MEASUREMENT,
        now=T0,
    )
    entry = store.audit_entries()[-1]
    assert (entry.event, entry.data["reason"]) == ("attest.deny", "MEASUREMENT_NOT_ALLOWED")
    assert counter_value(store) == store.audit_head()


# --- revocations ----------------------------------------------------------------------------


def test_revoking_an_unknown_serial_is_refused(store: CasStore) -> None:
    issue(store, 0x10)
    with pytest.raises(NetshieldError) as info:
        store.revoke(kind="instance", target="11", now=T0, actor="alice")
    assert info.value.reason is Reason.REVOCATION_TARGET_UNKNOWN


def test_revoking_an_issued_serial_names_its_service_and_platform(store: CasStore) -> None:
    issue(store, 0xABCDEF)
    rev = store.revoke(kind="instance", target="0xAB:CD:EF", now=T0, actor="alice", note="leak")
    assert (rev.seq, rev.kind, rev.target) == (1, "instance", "abcdef")
    assert (rev.service, rev.platform_id, rev.note) == ("orders", "p1", "leak")
    assert store.audit_entries()[-1].event == "revoke"
    assert counter_value(store) == store.audit_head()


def test_revoking_twice_returns_the_first_revocation_without_a_new_entry(store: CasStore) -> None:
    first = store.revoke(kind="platform", target="p1", now=T0, actor="alice")
    head = store.audit_head()
    again = store.revoke(kind="platform", target="p1", now=T0 + TTL, actor="bob")
    assert again == first
    assert store.audit_head() == head


def test_revocation_feed_is_ordered_and_resumes_after_since(store: CasStore) -> None:
    issue(store, 7)
    a = store.revoke(kind="service", target="frontend", now=T0, actor="alice")
    b = store.revoke(kind="platform", target="p9", now=T0, actor="alice")
    c = store.revoke(kind="instance", target="7", now=T0, actor="alice")
    assert [r.seq for r in (a, b, c)] == [1, 2, 3]
    assert store.revocations() == [a, b, c]
    assert store.revocations(since=1) == [b, c]
    assert store.revocations(since=3) == []
    assert store.revoked_services() == frozenset({"frontend"})
    assert store.revoked_platforms() == frozenset({"p9"})


def test_serial_counts_as_revoked_by_instance_service_or_platform(store: CasStore) -> None:
    issue(store, 1, "orders", "p1")
    issue(store, 2, "frontend", "p2")
    issue(store, 3, "billing", "p3")
    issue(store, 4, "search", "p4")
    store.revoke(kind="instance", target="1", now=T0, actor="a")
    store.revoke(kind="service", target="frontend", now=T0, actor="a")
    store.revoke(kind="platform", target="p3", now=T0, actor="a")
    assert [store.is_serial_revoked(s) for s in (1, 2, 3, 4, 5)] == [
        True,
        True,
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("kind", "target"), [("service", "Not A Name"), ("platform", ""), ("instance", "xyz")]
)
def test_malformed_revocation_targets_are_refused(store: CasStore, kind: str, target: str) -> None:
    with pytest.raises(NetshieldError):
        store.revoke(kind=kind, target=target, now=T0, actor="a")  # type: ignore[arg-type]
    assert store.revocations() == []


# --- generic audit --------------------------------------------------------------------------


def test_generic_event_is_chained_and_advances_the_counter(store: CasStore) -> None:
    entry = store.audit("cas.start", {"listen": "127.0.0.1:0"}, now=T0)
    assert entry.seq == 2
    assert store.audit_entries(since=1) == [entry]
    assert counter_value(store) == CounterValue(2, entry.hash)


@pytest.mark.parametrize("event", ["revoke", "policy.apply", "attest.allow", "Bad Name", ""])
def test_generic_audit_refuses_reserved_or_malformed_event_names(
    store: CasStore, event: str
) -> None:
    with pytest.raises(ValueError):
        store.audit(event, {}, now=T0)


def test_audit_entries_pages_with_since_and_limit(store: CasStore) -> None:
    for i in range(5):
        store.audit("test.event", {"i": i}, now=T0)
    assert [e.seq for e in store.audit_entries(since=2, limit=2)] == [3, 4]
    assert [e.seq for e in store.audit_entries(since=4)] == [5, 6]
    assert store.audit_entries(limit=0) == []


def test_empty_counter_head_is_genesis() -> None:
    assert CounterValue(0, GENESIS).head == "0" * 64


def test_concurrent_mutations_from_threads_keep_one_intact_chain(store: CasStore) -> None:
    def worker(n: int) -> None:
        for i in range(10):
            store.audit("test.event", {"thread": n, "i": i}, now=T0)
        store.revoke(kind="platform", target=f"p{n}", now=T0, actor="a")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert store.audit_head().seq == 1 + 8 * 11
    assert [r.seq for r in store.revocations()] == list(range(1, 9))
    assert store.verify_audit() == []
    assert counter_value(store) == store.audit_head()
