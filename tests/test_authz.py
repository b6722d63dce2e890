"""Connection authorization from values: identity, revocation, epoch, allowed callers, audit mode."""

from __future__ import annotations

import pytest

from netshield.authz import authorize_inbound, authorize_outbound, may_call_decision
from netshield.identity import SpiffeId
from netshield.pki.certext import AttestationClaims
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.tls.peer import PeerInfo

TD = "t.example"


def peer(uri: str | None, *, serial: int = 0xABC, epoch: int = 2) -> PeerInfo:
    return PeerInfo(
        spiffe_id=SpiffeId.parse(uri) if uri else None,
        serial=serial,
        not_after=None,
        claims=AttestationClaims("a" * 64, 1, epoch, "p1"),
        tls_version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        resumed=False,
    )


def orders_slice(mode: str = "enforce") -> PolicySlice:
    return PolicySlice.from_json(
        {
            "service": "orders",
            "trust_domain": TD,
            "allowed_callers": ["frontend"],
            "authorization": mode,
            "may_call": ["payments"],
            "min_epoch": 1,
            "registry": {
                name: {"identity": f"spiffe://{TD}/svc/{name}", "addresses": [], "authorization": m}
                for name, m in (("payments", "enforce"), ("audit-svc", "audit"))
            },
            "native_services": {},
        }
    )


def ok(_p: PeerInfo) -> Reason | None:
    return None


def test_inbound_allows_a_listed_caller_and_names_the_clause() -> None:
    d = authorize_inbound(orders_slice(), peer(f"spiffe://{TD}/svc/frontend"), ok, policy_version=7)
    assert d.allowed and d.decision == "allow" and d.mode == "enforce"
    assert "services.orders.allowed_callers" in d.detail and "7" in d.detail


def test_inbound_denies_caller_not_in_policy_with_the_fix() -> None:
    d = authorize_inbound(orders_slice(), peer(f"spiffe://{TD}/svc/intruder"), ok, policy_version=7)
    assert (d.allowed, d.reason) == (False, Reason.PEER_NOT_AUTHORIZED)
    assert "add `intruder` to" not in d.detail and "add `intruder` there" in d.detail


def test_audit_mode_allows_a_would_be_denial_and_marks_it() -> None:
    d = authorize_inbound(
        orders_slice("audit"), peer(f"spiffe://{TD}/svc/intruder"), ok, policy_version=7
    )
    assert (d.allowed, d.reason, d.mode) == (True, Reason.PEER_NOT_AUTHORIZED, "audit")
    # audit mode never lets a revoked peer through
    d = authorize_inbound(
        orders_slice("audit"),
        peer(f"spiffe://{TD}/svc/frontend"),
        lambda _p: Reason.PEER_REVOKED,
        policy_version=7,
    )
    assert (d.allowed, d.reason) == (False, Reason.PEER_REVOKED)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        (None, Reason.PEER_CERT_UNTRUSTED),
        ("spiffe://other.example/svc/frontend", Reason.PEER_CERT_UNTRUSTED),
        (f"spiffe://{TD}/admin/operator", Reason.PEER_NOT_AUTHORIZED),
    ],
)
def test_inbound_refuses_peers_that_are_not_services_of_this_trust_domain(
    uri: str | None, reason: Reason
) -> None:
    d = authorize_inbound(orders_slice(), peer(uri), ok, policy_version=1)
    assert (d.allowed, d.reason) == (False, reason)


@pytest.mark.parametrize("reason", [Reason.PEER_REVOKED, Reason.POLICY_STALE])
def test_revoked_or_stale_peer_is_denied_in_both_directions(reason: Reason) -> None:
    d = authorize_inbound(
        orders_slice(), peer(f"spiffe://{TD}/svc/frontend"), lambda _p: reason, policy_version=1
    )
    assert (d.allowed, d.reason) == (False, reason)
    d = authorize_outbound(
        orders_slice(),
        "payments",
        peer(f"spiffe://{TD}/svc/payments"),
        lambda _p: reason,
        policy_version=1,
    )
    assert (d.allowed, d.reason) == (False, reason)


def test_outbound_requires_the_expected_server_identity() -> None:
    good = authorize_outbound(
        orders_slice(), "payments", peer(f"spiffe://{TD}/svc/payments"), ok, policy_version=1
    )
    assert good.allowed
    bad = authorize_outbound(
        orders_slice(), "payments", peer(f"spiffe://{TD}/svc/frontend"), ok, policy_version=1
    )
    assert (bad.allowed, bad.reason) == (False, Reason.PEER_IDENTITY_MISMATCH)
    assert "svc/payments" in bad.detail and "svc/frontend" in bad.detail


def test_outbound_refuses_a_callee_that_does_not_list_us_unless_it_audits() -> None:
    d = may_call_decision(orders_slice(), "frontend", policy_version=3)
    assert (d.allowed, d.reason) == (False, Reason.PEER_NOT_AUTHORIZED)
    assert "services.frontend.allowed_callers" in d.detail
    d = may_call_decision(orders_slice(), "audit-svc", policy_version=3)
    assert (d.allowed, d.mode) == (True, "audit")
