"""Connection authorization from values: identity, revocation, epoch, allowed callers, audit mode."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from netshield.authz import authorize_inbound, authorize_outbound, may_call_decision
from netshield.identity import SpiffeId
from netshield.pki.certext import AttestationClaims
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.tls.peer import PeerInfo

TD = "t.example"
M = "a" * 64
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def peer(
    uri: str | None,
    *,
    serial: int = 0xABC,
    epoch: int = 2,
    measurement: str = M,
    lifetime: timedelta = timedelta(minutes=10),
    resumed: bool = False,
) -> PeerInfo:
    """A peer as the CAS issues it: 60 s backdated, `lifetime` long, issued a minute ago."""
    not_before = NOW - timedelta(minutes=1) - timedelta(seconds=60)
    return PeerInfo(
        spiffe_id=SpiffeId.parse(uri) if uri else None,
        serial=serial,
        not_after=not_before + timedelta(seconds=60) + lifetime,
        claims=AttestationClaims(measurement, 1, epoch, "p1"),
        tls_version="TLSv1.2" if resumed else "TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        resumed=resumed,
        not_before=not_before,
    )


def orders_slice(mode: str = "enforce") -> PolicySlice:
    return PolicySlice.from_json(
        {
            "service": "orders",
            "trust_domain": TD,
            "allowed_callers": ["frontend"],
            "authorization": mode,
            "may_call": ["payments"],
            "min_epoch": 2,
            "certificate_lifetime_seconds": 600,
            "registry": {
                name: {
                    "identity": f"spiffe://{TD}/svc/{name}",
                    "addresses": [],
                    "authorization": m,
                    "measurements": [M],
                }
                for name, m in (
                    ("payments", "enforce"),
                    ("audit-svc", "audit"),
                    ("frontend", "enforce"),
                    ("intruder", "enforce"),
                )
            },
            "native_services": {},
        }
    )


def ok(_p: PeerInfo) -> Reason | None:
    return None


def test_inbound_allows_a_listed_caller_and_names_the_clause() -> None:
    d = authorize_inbound(
        orders_slice(), peer(f"spiffe://{TD}/svc/frontend"), ok, policy_version=7, now=NOW
    )
    assert d.allowed and d.decision == "allow" and d.mode == "enforce"
    assert "services.orders.allowed_callers" in d.detail and "7" in d.detail


def test_inbound_denies_caller_not_in_policy_with_the_fix() -> None:
    d = authorize_inbound(
        orders_slice(), peer(f"spiffe://{TD}/svc/intruder"), ok, policy_version=7, now=NOW
    )
    assert (d.allowed, d.reason) == (False, Reason.PEER_NOT_AUTHORIZED)
    assert "add `intruder` to" not in d.detail and "add `intruder` there" in d.detail


def test_audit_mode_allows_a_would_be_denial_and_marks_it() -> None:
    d = authorize_inbound(
        orders_slice("audit"), peer(f"spiffe://{TD}/svc/intruder"), ok, policy_version=7, now=NOW
    )
    assert (d.allowed, d.reason, d.mode) == (True, Reason.PEER_NOT_AUTHORIZED, "audit")
    # audit mode never lets a revoked peer through
    d = authorize_inbound(
        orders_slice("audit"),
        peer(f"spiffe://{TD}/svc/frontend"),
        lambda _p: Reason.PEER_REVOKED,
        policy_version=7,
        now=NOW,
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
    d = authorize_inbound(orders_slice(), peer(uri), ok, policy_version=1, now=NOW)
    assert (d.allowed, d.reason) == (False, reason)


@pytest.mark.parametrize("reason", [Reason.PEER_REVOKED, Reason.POLICY_STALE])
def test_revoked_or_stale_peer_is_denied_in_both_directions(reason: Reason) -> None:
    d = authorize_inbound(
        orders_slice(),
        peer(f"spiffe://{TD}/svc/frontend"),
        lambda _p: reason,
        policy_version=1,
        now=NOW,
    )
    assert (d.allowed, d.reason) == (False, reason)
    d = authorize_outbound(
        orders_slice(),
        "payments",
        peer(f"spiffe://{TD}/svc/payments"),
        lambda _p: reason,
        policy_version=1,
        now=NOW,
    )
    assert (d.allowed, d.reason) == (False, reason)


def test_outbound_requires_the_expected_server_identity() -> None:
    good = authorize_outbound(
        orders_slice(),
        "payments",
        peer(f"spiffe://{TD}/svc/payments"),
        ok,
        policy_version=1,
        now=NOW,
    )
    assert good.allowed
    bad = authorize_outbound(
        orders_slice(),
        "payments",
        peer(f"spiffe://{TD}/svc/frontend"),
        ok,
        policy_version=1,
        now=NOW,
    )
    assert (bad.allowed, bad.reason) == (False, Reason.PEER_IDENTITY_MISMATCH)
    assert "svc/payments" in bad.detail and "svc/frontend" in bad.detail


def test_outbound_refuses_a_callee_that_does_not_list_us_unless_it_audits() -> None:
    d = may_call_decision(orders_slice(), "frontend", policy_version=3)
    assert (d.allowed, d.reason) == (False, Reason.PEER_NOT_AUTHORIZED)
    assert "services.frontend.allowed_callers" in d.detail
    d = may_call_decision(orders_slice(), "audit-svc", policy_version=3)
    assert (d.allowed, d.mode) == (True, "audit")


# --- the peer's certificate must be one the CAS issues under this policy ----------------------

FRONTEND = f"spiffe://{TD}/svc/frontend"


def inbound(p: PeerInfo, *, at: datetime = NOW, feed_epoch: int = 0) -> tuple[bool, Reason]:
    d = authorize_inbound(
        orders_slice("audit"), p, ok, policy_version=7, now=at, feed_epoch=feed_epoch
    )
    return d.allowed, d.reason


def outbound(p: PeerInfo, *, at: datetime = NOW) -> tuple[bool, Reason]:
    d = authorize_outbound(orders_slice(), "payments", p, ok, policy_version=7, now=at)
    return d.allowed, d.reason


def test_a_peer_certificate_as_the_cas_issues_it_is_allowed() -> None:
    assert inbound(peer(FRONTEND)) == (True, Reason.OK)
    assert outbound(peer(f"spiffe://{TD}/svc/payments")) == (True, Reason.OK)


def test_a_resumed_session_of_an_expired_certificate_is_refused_like_a_full_handshake() -> None:
    p = peer(FRONTEND, resumed=True)
    assert p.not_after is not None
    assert inbound(p, at=p.not_after - timedelta(seconds=1)) == (True, Reason.OK)
    assert inbound(p, at=p.not_after) == (False, Reason.PEER_CERT_EXPIRED)
    d = authorize_inbound(orders_slice(), p, ok, policy_version=7, now=p.not_after)
    assert "resumed" in d.detail
    payments = peer(f"spiffe://{TD}/svc/payments", resumed=True)
    assert payments.not_after is not None
    assert outbound(payments, at=payments.not_after) == (False, Reason.PEER_CERT_EXPIRED)


def test_a_certificate_that_lives_longer_than_the_policy_says_is_refused() -> None:
    assert inbound(peer(FRONTEND, lifetime=timedelta(minutes=10))) == (True, Reason.OK)
    assert inbound(peer(FRONTEND, lifetime=timedelta(hours=24))) == (
        False,
        Reason.PEER_CERT_LIFETIME_EXCEEDED,
    )
    assert outbound(peer(f"spiffe://{TD}/svc/payments", lifetime=timedelta(hours=24))) == (
        False,
        Reason.PEER_CERT_LIFETIME_EXCEEDED,
    )


def test_a_measurement_the_policy_does_not_allow_for_the_service_is_refused() -> None:
    made_up = peer(FRONTEND, measurement="f" * 64)
    assert inbound(made_up) == (False, Reason.PEER_MEASUREMENT_NOT_ALLOWED)
    assert outbound(replace(made_up, spiffe_id=SpiffeId.parse(f"spiffe://{TD}/svc/payments"))) == (
        False,
        Reason.PEER_MEASUREMENT_NOT_ALLOWED,
    )


def test_an_epoch_above_the_current_one_is_refused_and_a_raised_epoch_is_learned() -> None:
    assert inbound(peer(FRONTEND, epoch=99)) == (False, Reason.PEER_EPOCH_UNKNOWN)
    assert inbound(peer(FRONTEND, epoch=3)) == (False, Reason.PEER_EPOCH_UNKNOWN)
    assert inbound(peer(FRONTEND, epoch=3), feed_epoch=3) == (True, Reason.OK)
    assert inbound(peer(FRONTEND, epoch=1)) == (False, Reason.POLICY_STALE)


def test_audit_mode_never_relaxes_a_certificate_problem() -> None:
    assert inbound(peer(f"spiffe://{TD}/svc/intruder")) == (True, Reason.PEER_NOT_AUTHORIZED)
    assert inbound(peer(f"spiffe://{TD}/svc/intruder", epoch=99)) == (
        False,
        Reason.PEER_EPOCH_UNKNOWN,
    )


def test_a_service_the_policy_does_not_name_has_no_allowed_measurement() -> None:
    d = authorize_inbound(
        orders_slice("audit"), peer(f"spiffe://{TD}/svc/ghost"), ok, policy_version=7, now=NOW
    )
    assert (d.allowed, d.reason) == (False, Reason.PEER_MEASUREMENT_NOT_ALLOWED)
    assert "names no service ghost" in d.detail
