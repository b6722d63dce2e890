"""The sidecar's revocation view: feed events in, a reason code per peer out; malformed events
change nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netshield.agent.revocations import RevocationState, parse_serial
from netshield.identity import SpiffeId
from netshield.pki.certext import AttestationClaims
from netshield.reasons import Reason
from netshield.tls.peer import PeerInfo

TD = "test.netshield.local"


def peer(
    service: str = "orders", serial: int = 0xABC, platform: str = "p-good", epoch: int | None = 2
) -> PeerInfo:
    claims = (
        None
        if epoch is None
        else AttestationClaims(
            measurement="a1" * 32, policy_version=1, epoch=epoch, platform_id=platform
        )
    )
    return PeerInfo(
        spiffe_id=SpiffeId.for_service(TD, service),
        serial=serial,
        not_after=datetime(2030, 1, 1, tzinfo=UTC),
        claims=claims,
        tls_version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        resumed=False,
    )


def revoke(kind: str, target: str, seq: int = 10, **extra: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "type": "revoke",
        "ts": "2030-01-01T00:00:00Z",
        "revocation_seq": 1,
        "kind": kind,
        "target": target,
        "service": extra.get("service"),
        "platform_id": extra.get("platform_id"),
        "actor": "spiffe://test.netshield.local/admin/operator",
        "note": "",
    }


def state(min_epoch: int = 2) -> RevocationState:
    return RevocationState(min_epoch=min_epoch)


def test_unrevoked_peer_at_current_epoch_is_allowed() -> None:
    assert state().check(peer()) is None


def test_revoked_instance_serial_is_refused_and_other_instances_are_not() -> None:
    s = state()
    s.apply(revoke("instance", "abc", service="orders", platform_id="p-good"))
    assert s.check(peer(serial=0xABC)) is Reason.PEER_REVOKED
    # the twin: another instance of the same service on the same platform stays allowed
    assert s.check(peer(serial=0xABD)) is None
    assert s.position == 10


def test_revoked_service_refuses_every_instance_of_it_only() -> None:
    s = state()
    s.apply(revoke("service", "orders", service="orders"))
    assert s.check(peer("orders", serial=1)) is Reason.PEER_REVOKED
    assert s.check(peer("frontend", serial=2)) is None


def test_revoked_platform_refuses_peers_attested_on_it_only() -> None:
    s = state()
    s.apply(revoke("platform", "p-bad", platform_id="p-bad"))
    assert s.check(peer(platform="p-bad")) is Reason.PEER_REVOKED
    assert s.check(peer(platform="p-good")) is None
    assert s.check(peer(platform="")) is None  # an unknown platform never matches


def test_peer_below_min_epoch_is_stale_and_at_min_epoch_is_not() -> None:
    s = state(min_epoch=2)
    s.set_min_epoch(3)
    assert s.check(peer(epoch=2)) is Reason.POLICY_STALE
    assert s.check(peer(epoch=3)) is None
    assert s.min_epoch == 3


def test_peer_without_attestation_claims_is_stale() -> None:
    assert state(min_epoch=0).check(peer(epoch=None)) is Reason.POLICY_STALE


def test_revocation_wins_over_epoch() -> None:
    s = state(min_epoch=5)
    s.apply(revoke("service", "orders"))
    assert s.check(peer(epoch=1)) is Reason.PEER_REVOKED


def test_policy_apply_event_records_the_newest_version() -> None:
    s = state()
    s.apply({"seq": 3, "type": "policy.apply", "version": 2, "hash": "sha256:" + "0" * 64})
    s.apply({"seq": 4, "type": "policy.apply", "version": 1, "hash": "sha256:" + "1" * 64})
    assert (s.policy_version, s.policy_hash) == (2, "sha256:" + "0" * 64)
    assert s.check(peer()) is None


def test_unknown_event_types_are_ignored() -> None:
    s = state()
    s.apply({"seq": 7, "type": "something.new", "kind": "service", "target": "orders"})
    assert s.check(peer()) is None


@pytest.mark.parametrize(
    "event",
    [
        revoke("instance", "not-hex"),
        revoke("service", ""),
        revoke("galaxy", "orders"),
        {"seq": 1, "type": "revoke", "kind": "service"},
        {"seq": -1, "type": "revoke", "kind": "service", "target": "orders"},
        {"seq": 1, "type": "policy.apply", "version": "2"},
    ],
)
def test_malformed_event_raises_value_error_and_changes_nothing(event: dict[str, Any]) -> None:
    s = state()
    before = repr(s)
    with pytest.raises(ValueError):
        s.apply(event)
    assert repr(s) == before
    assert s.check(peer()) is None


def test_set_min_epoch_rejects_negative_and_bool() -> None:
    s = state()
    for bad in (-1, True):
        with pytest.raises(ValueError):
            s.set_min_epoch(bad)
    assert s.min_epoch == 2


@pytest.mark.parametrize(("text", "value"), [("abc", 0xABC), ("0xABC", 0xABC), ("0a:bc", 0xABC)])
def test_parse_serial_accepts_operator_spellings(text: str, value: int) -> None:
    assert parse_serial(text) == value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from(["seq", "type", "kind", "target", "version", "hash", "service"]),
        json_values
        | st.sampled_from(["revoke", "policy.apply", "instance", "service", "platform"]),
    )
)
def test_apply_on_arbitrary_events_raises_only_value_error(event: dict[str, Any]) -> None:
    s = state()
    before = repr(s)
    try:
        s.apply(event)
    except ValueError:
        assert repr(s) == before
