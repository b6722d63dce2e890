"""The handshake-and-authorize step of each mesh direction, shared by every flow that takes or
makes a mutual-TLS connection (per-connection flows, transparent capture, tunnels).

Each completes the TLS handshake, sets `attempt.peer` and `handshake_seconds` (inbound: a client
that negotiated the tunnel ALPN id makes the attempt a tunnel's), and decides with
`netshield.authz` against the policy the current credentials carry; a denial (a failed handshake
included) is recorded on the attempt and the TLS stream closed before the decision is returned.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from netshield.authz import ConnDecision, authorize_inbound, authorize_outbound
from netshield.net.streams import TlsHandshakeError, TlsStream
from netshield.netaddr import HostPort
from netshield.sidecar.connection import Attempt
from netshield.sidecar.runtime import Runtime
from netshield.tls.contexts import TUNNEL_ALPN, TlsContexts
from netshield.tls.peer import PeerInfo
from netshield.tunnel.link import tunnel_id_of

__all__ = ["decide_inbound", "decide_outbound", "inbound_decision", "outbound_decision"]


def decide_inbound(rt: Runtime, contexts: TlsContexts, peer: PeerInfo) -> ConnDecision:
    """May `peer` call this service, by the policy of `contexts` and the feed, as of now?"""
    creds = contexts.credentials
    return authorize_inbound(
        creds.policy,
        peer,
        rt.revocations.check,
        policy_version=creds.policy_version,
        now=datetime.now(UTC),
        feed_epoch=rt.revocations.min_epoch,
    )


def decide_outbound(
    rt: Runtime, contexts: TlsContexts, service: str, peer: PeerInfo
) -> ConnDecision:
    """Is `peer` the destination `service`, and may this service call it, as of now?"""
    creds = contexts.credentials
    return authorize_outbound(
        creds.policy,
        service,
        peer,
        rt.revocations.check,
        policy_version=creds.policy_version,
        now=datetime.now(UTC),
        feed_epoch=rt.revocations.min_epoch,
    )


async def inbound_decision(
    rt: Runtime,
    attempt: Attempt,
    tls: TlsStream,
    contexts: TlsContexts,
    *,
    timeout: float | None = None,
) -> ConnDecision:
    """Complete the server side of mutual TLS (within `timeout` seconds, default
    limits.handshake_timeout) and decide whether the caller may call us. Sets `attempt.peer` and
    `handshake_seconds`. A denial (a failed handshake included) is recorded and `tls` closed
    (after a failed handshake it lingers to deliver its alert) before it is returned."""
    t0 = time.monotonic()
    if timeout is None:
        timeout = rt.config.limits.handshake_timeout.total_seconds()
    try:
        attempt.peer = await tls.handshake(timeout)
    except TlsHandshakeError as err:
        return _denied(attempt, ConnDecision(False, err.failure.reason, err.failure.detail))
    attempt.handshake_seconds = time.monotonic() - t0
    if tls.alpn == TUNNEL_ALPN:
        attempt.become_tunnel(tunnel_id_of(tls))
    decision = decide_inbound(rt, contexts, attempt.peer)
    return decision if decision.allowed else _denied(attempt, decision, tls)


async def outbound_decision(
    rt: Runtime,
    attempt: Attempt,
    tls: TlsStream,
    contexts: TlsContexts,
    service: str,
    target: HostPort,
    t0: float,
) -> ConnDecision:
    """Complete the client side of mutual TLS to `target` (dialled at monotonic `t0`) and decide
    whether the server is `service` and may be called. Sets `attempt.peer` and
    `handshake_seconds`; a denial is recorded and `tls` closed before it is returned."""
    try:
        attempt.peer = await tls.handshake(rt.config.limits.handshake_timeout.total_seconds())
    except TlsHandshakeError as err:
        detail = f"{service} at {target}: {err.failure.detail}"
        return _denied(attempt, ConnDecision(False, err.failure.reason, detail))
    attempt.handshake_seconds = time.monotonic() - t0
    decision = decide_outbound(rt, contexts, service, attempt.peer)
    return decision if decision.allowed else _denied(attempt, decision, tls)


def _denied(attempt: Attempt, decision: ConnDecision, tls: TlsStream | None = None) -> ConnDecision:
    attempt.deny(decision.reason, decision.detail)
    if tls is not None:
        tls.close()
    return decision
