"""Connection authorization: who may talk to whom, decided from values.

After OpenSSL verified the peer's chain against the mesh CA, the sidecar decides here, without
sockets: is the peer a service of this trust domain, is it revoked or minted under a stale epoch,
does its certificate look like one the CAS issues under the policy this sidecar holds (valid at
`now`, a lifetime within `certificates.lifetime`, a measurement the policy allows for its
service, an epoch that is current), and does the policy slice allow the call. Inbound checks the
caller against `allowed_callers`; outbound checks that the server is the expected destination
service and that this service may call it. A service in `audit` mode gets would-be denials
allowed and marked (only PEER_NOT_AUTHORIZED ones: a certificate problem is never relaxed).

Guarantees: a resumed TLS session is decided exactly like a full handshake (OpenSSL does not
verify the certificate again when it resumes, so expiry is checked here against `now`); the
certificate checks hold even for someone who holds the mesh CA key but not the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from netshield.pki.ca import CLOCK_SKEW
from netshield.policyslice import PolicySlice
from netshield.reasons import Reason
from netshield.tls.peer import PeerInfo

Mode = Literal["enforce", "audit"]
RevocationCheck = Callable[[PeerInfo], Reason | None]


@dataclass(frozen=True, slots=True)
class ConnDecision:
    """The outcome for one connection; `allowed` already accounts for audit mode."""

    allowed: bool
    reason: Reason
    detail: str
    mode: Mode = "enforce"

    @property
    def decision(self) -> Literal["allow", "deny"]:
        return "allow" if self.allowed else "deny"


def _allow(detail: str) -> ConnDecision:
    return ConnDecision(True, Reason.OK, detail)


def _deny(reason: Reason, detail: str) -> ConnDecision:
    return ConnDecision(False, reason, detail)


def _identity_problem(peer: PeerInfo, trust_domain: str) -> ConnDecision | None:
    if peer.spiffe_id is None:
        return _deny(
            Reason.PEER_CERT_UNTRUSTED,
            "the peer's certificate carries no SPIFFE id (exactly one spiffe:// URI SAN)",
        )
    if peer.spiffe_id.trust_domain != trust_domain:
        return _deny(
            Reason.PEER_CERT_UNTRUSTED,
            f"the peer {peer.spiffe_id} belongs to another trust domain than {trust_domain}",
        )
    if peer.spiffe_id.service is None:
        return _deny(
            Reason.PEER_NOT_AUTHORIZED,
            f"the peer {peer.spiffe_id} is not a service identity (spiffe://{trust_domain}/svc/<name>)",
        )
    return None


def _revoked(peer: PeerInfo, check: RevocationCheck) -> ConnDecision | None:
    reason = check(peer)
    if reason is None:
        return None
    if reason is Reason.POLICY_STALE:
        return _deny(
            reason,
            f"the peer {peer.spiffe_id}'s certificate (epoch {peer.epoch}) predates the "
            "policy's certificates.min_epoch; it must re-attest",
        )
    return _deny(
        reason, f"the peer {peer.spiffe_id} (serial {_serial(peer)}) is revoked at the CAS"
    )


def certificate_problem(
    slice_: PolicySlice, peer: PeerInfo, now: datetime, *, feed_epoch: int = 0
) -> ConnDecision | None:
    """Why the peer's certificate is not one the CAS issues under this policy, or None.

    `feed_epoch` is the minimum epoch the CAS feed last announced (it may be newer than the
    slice's). A certificate without attestation claims never gets here (`_revoked` refuses it).
    """
    who = f"the peer {peer.spiffe_id}"
    if peer.not_after is None or now >= peer.not_after:
        when = peer.not_after.isoformat() if peer.not_after else "an unknown time"
        resumed = " (a resumed TLS session)" if peer.resumed else ""
        return _deny(
            Reason.PEER_CERT_EXPIRED,
            f"{who}'s certificate expired at {when}{resumed}; its sidecar must re-attest",
        )
    if peer.not_before is not None:
        lifetime = peer.not_after - peer.not_before
        if lifetime > slice_.certificate_lifetime + CLOCK_SKEW:
            return _deny(
                Reason.PEER_CERT_LIFETIME_EXCEEDED,
                f"{who}'s certificate lives {_span(lifetime)}, longer than certificates.lifetime "
                f"{_span(slice_.certificate_lifetime)}: the CAS issued no such certificate",
            )
    claims, service = peer.claims, peer.service
    entry = slice_.registry.get(service) if service else None
    if entry is None:
        return _deny(
            Reason.PEER_MEASUREMENT_NOT_ALLOWED,
            f"the policy names no service {service}, so no measurement is allowed for {who}: "
            "the CAS issued no such certificate",
        )
    if (
        claims is not None
        and not entry.any_measurement
        and claims.measurement not in entry.measurements
    ):
        return _deny(
            Reason.PEER_MEASUREMENT_NOT_ALLOWED,
            f"{who}'s certificate carries measurement {claims.measurement[:16]}..., which is not "
            f"in services.{service}.measurements nor among the reference values under "
            f"services.{service}.evidence",
        )
    current = max(slice_.min_epoch, feed_epoch)
    if peer.epoch is not None and peer.epoch > current:
        return _deny(
            Reason.PEER_EPOCH_UNKNOWN,
            f"{who}'s certificate claims epoch {peer.epoch}, above the current epoch {current}: "
            "the CAS issued no such certificate",
        )
    if peer.epoch is not None and peer.epoch < slice_.min_epoch:
        return _deny(
            Reason.POLICY_STALE,
            f"{who}'s certificate (epoch {peer.epoch}) predates the policy's "
            f"certificates.min_epoch {slice_.min_epoch}; it must re-attest",
        )
    return None


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _serial(peer: PeerInfo) -> str:
    return format(peer.serial, "x") if peer.serial is not None else "unknown"


def _audited(decision: ConnDecision, mode: Mode) -> ConnDecision:
    if decision.allowed or mode != "audit" or decision.reason is not Reason.PEER_NOT_AUTHORIZED:
        return decision
    return ConnDecision(True, decision.reason, f"audit mode, allowed: {decision.detail}", "audit")


def authorize_inbound(
    slice_: PolicySlice,
    peer: PeerInfo,
    check: RevocationCheck,
    *,
    policy_version: int,
    now: datetime,
    feed_epoch: int = 0,
) -> ConnDecision:
    """May `peer` call the local service at `now`? The slice is the one the CAS issued with our
    certificate; `feed_epoch` the minimum epoch the CAS feed announced last."""
    local = slice_.service
    problem = (
        _identity_problem(peer, slice_.trust_domain)
        or _revoked(peer, check)
        or certificate_problem(slice_, peer, now, feed_epoch=feed_epoch)
    )
    if problem:
        return problem
    caller = peer.service
    if caller in slice_.allowed_callers:
        return _allow(
            f"{caller} is in services.{local}.allowed_callers (policy version {policy_version})"
        )
    decision = _deny(
        Reason.PEER_NOT_AUTHORIZED,
        f"{caller} is not in services.{local}.allowed_callers (policy version {policy_version}); "
        f"add `{caller}` there to allow it",
    )
    return _audited(decision, slice_.authorization)


def authorize_outbound(
    slice_: PolicySlice,
    destination: str,
    peer: PeerInfo,
    check: RevocationCheck,
    *,
    policy_version: int,
    now: datetime,
    feed_epoch: int = 0,
) -> ConnDecision:
    """Is the server we reached really `destination` (with a certificate the CAS would issue),
    and may the local service call it?"""
    trust_domain = slice_.trust_domain
    problem = _identity_problem(peer, trust_domain)
    if problem:
        return problem
    if peer.service != destination:
        return _deny(
            Reason.PEER_IDENTITY_MISMATCH,
            f"expected spiffe://{trust_domain}/svc/{destination} but the server is {peer.spiffe_id}",
        )
    problem = _revoked(peer, check) or certificate_problem(slice_, peer, now, feed_epoch=feed_epoch)
    if problem:
        return problem
    return may_call_decision(slice_, destination, policy_version=policy_version)


def may_call_decision(
    slice_: PolicySlice, destination: str, *, policy_version: int
) -> ConnDecision:
    """The caller-side view of the callee's allowed_callers (decided before dialling)."""
    local = slice_.service
    if destination in slice_.may_call:
        return _allow(
            f"{local} is in services.{destination}.allowed_callers (policy version {policy_version})"
        )
    decision = _deny(
        Reason.PEER_NOT_AUTHORIZED,
        f"{local} is not in services.{destination}.allowed_callers (policy version {policy_version}); "
        f"add `{local}` there to allow it",
    )
    return _audited(decision, slice_.authorization_of(destination))
