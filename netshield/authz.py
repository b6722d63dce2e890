"""Connection authorization: who may talk to whom, decided from values.

After OpenSSL verified the peer's chain against the mesh CA, the sidecar decides here, without
sockets: is the peer a service of this trust domain, is it revoked or minted under a stale epoch,
and does the policy slice this sidecar received allow the call. Inbound checks the caller against
`allowed_callers`; outbound checks that the server is the expected destination service and that
this service may call it. A service in `audit` mode gets would-be denials allowed and marked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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


def _serial(peer: PeerInfo) -> str:
    return format(peer.serial, "x") if peer.serial is not None else "unknown"


def _audited(decision: ConnDecision, mode: Mode) -> ConnDecision:
    if decision.allowed or mode != "audit" or decision.reason is not Reason.PEER_NOT_AUTHORIZED:
        return decision
    return ConnDecision(True, decision.reason, f"audit mode, allowed: {decision.detail}", "audit")


def authorize_inbound(
    slice_: PolicySlice, peer: PeerInfo, check: RevocationCheck, *, policy_version: int
) -> ConnDecision:
    """May `peer` call the local service? The slice is the one the CAS issued with our certificate."""
    local = slice_.service
    problem = _identity_problem(peer, slice_.trust_domain) or _revoked(peer, check)
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
) -> ConnDecision:
    """Is the server we reached really `destination`, and may the local service call it?"""
    trust_domain = slice_.trust_domain
    problem = _identity_problem(peer, trust_domain)
    if problem:
        return problem
    if peer.service != destination:
        return _deny(
            Reason.PEER_IDENTITY_MISMATCH,
            f"expected spiffe://{trust_domain}/svc/{destination} but the server is {peer.spiffe_id}",
        )
    problem = _revoked(peer, check)
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
