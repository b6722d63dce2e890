"""Per-connection flows of a sidecar: inbound (mTLS in, plaintext to the local service) and
outbound (plaintext from the local service, mTLS to the destination's sidecar).

Each flow decides before any byte moves: caller, limits, credentials, TLS handshake and
authorization; a denial is recorded at decision time and no byte reaches the upstream. An allowed
connection is relayed and recorded when it closes. Every log line carries the conn id.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime

from netshield.authz import ConnDecision, may_call_decision
from netshield.identity import SpiffeId
from netshield.logs.parties import host_of
from netshield.net.callers import caller_of, local_caller_problem
from netshield.net.streams import TlsStream
from netshield.netaddr import HostPort
from netshield.reasons import Reason
from netshield.sidecar.config import InboundConfig, OutboundConfig
from netshield.sidecar.connection import (
    Attempt,
    accept_plain,
    admit,
    admit_inbound,
    close_socket,
    dial,
    enroll,
    relay_connection,
    relay_plain_to,
    reset_socket,
)
from netshield.sidecar.handshake import inbound_decision, outbound_decision
from netshield.sidecar.native import native_outbound, native_route
from netshield.sidecar.runtime import Runtime
from netshield.sidecar.tunnels import serve_tunnel, tunnel_outbound
from netshield.tls.contexts import TlsContexts
from netshield.tls.failures import TlsFailure
from netshield.tls.peer import PeerInfo
from netshield.tls.tickets import TicketStore

log = logging.getLogger("netshield.sidecar")

HANDSHAKE_BACKSTOP = 2.0
"""Seconds past limits.handshake_timeout after which an inbound handshake ends even if the
pending-handshake sweeper (which ends it at its deadline) were late."""


async def inbound_flow(rt: Runtime, sock: socket.socket, inbound: InboundConfig) -> None:
    """mTLS from another sidecar -> authorize -> plaintext to the local service."""
    caller = caller_of(sock)
    attempt = Attempt(
        rt, "inbound", listener=str(inbound.listen), src=caller.address, dst=str(inbound.upstream)
    )

    def upstream() -> HostPort:
        return rt.config.inbound.upstream if rt.config.inbound else inbound.upstream

    await serve_inbound(rt, attempt, sock, upstream)


async def serve_inbound(
    rt: Runtime, attempt: Attempt, sock: socket.socket, upstream_of: Callable[[], HostPort]
) -> None:
    """The inbound pipeline for an accepted socket: the source's share of pending handshakes,
    admit, terminate mTLS (counted against limits.max_handshakes meanwhile), authorize the caller, take a slot under
    limits.max_connections, then relay plaintext to `upstream_of()` (read after the decision, so
    SIGHUP applies)."""
    try:
        source = host_of(attempt.src)
        if not rt.handshakes.admits(source):
            attempt.deny(
                Reason.SOURCE_HANDSHAKE_LIMIT,
                f"{rt.handshakes.pending_from(source)} handshakes from {source} are pending and "
                f"limits.max_handshakes_per_source is {rt.config.limits.max_handshakes_per_source}",
            )
            reset_socket(sock)
            return
        contexts = await admit_inbound(rt, attempt, sock)
        if contexts is None:
            return
        loop = asyncio.get_running_loop()
        conn_id = attempt.conn_id
        try:
            _t, tls = await loop.connect_accepted_socket(
                lambda: TlsStream(
                    contexts.server,
                    server_side=True,
                    peers=contexts.peers,
                    on_answer=lambda: rt.handshakes.answered(conn_id),
                ),
                sock,
            )
        except OSError as err:
            attempt.deny(Reason.PEER_RESET, f"the caller went away before the handshake ({err})")
            close_socket(sock)
            return
        t0 = time.monotonic()
        rt.handshakes.enter(
            conn_id,
            t0,
            lambda reason, detail: tls.cancel_handshake(TlsFailure(reason, detail)),
            source,
        )
        if tls.answered:  # the ClientHello came with the connection
            rt.handshakes.answered(conn_id)
        try:  # the deadline is the tracker's (it shrinks under pressure); this is a backstop
            backstop = rt.config.limits.handshake_timeout.total_seconds() + HANDSHAKE_BACKSTOP
            decision = await inbound_decision(rt, attempt, tls, contexts, timeout=backstop)
        finally:
            rt.handshakes.leave(conn_id)
        if not decision.allowed:
            return
        if attempt.direction == "tunnel":  # its streams take slots, one each
            await serve_tunnel(rt, attempt, tls, decision, upstream_of)
            return
        if not enroll(rt, attempt):
            tls.close()
            return
        if decision.mode == "audit":
            log.warning("conn=%s inbound %s", attempt.conn_id, decision.detail)
        target = upstream_of()
        attempt.dst = str(target)
        await relay_plain_to(rt, attempt, decision, tls, target)
    except asyncio.CancelledError:
        attempt.abandon()
        raise


def current_outbound(rt: Runtime, index: int, started_with: OutboundConfig) -> OutboundConfig:
    """The listener's config as of now (SIGHUP may have changed its address override)."""
    outbound = rt.config.outbound
    if index < len(outbound) and outbound[index].service == started_with.service:
        return outbound[index]
    return started_with


def local_name(sock: socket.socket) -> str:
    """How records name the listener a connection arrived on: its bound address."""
    try:
        name = sock.getsockname()
    except OSError:
        return "unknown"
    if isinstance(name, str):
        return f"unix:{name}"
    return str(HostPort(name[0], name[1]))


async def outbound_flow(
    rt: Runtime, sock: socket.socket, index: int, started_with: OutboundConfig
) -> None:
    """plaintext from a local caller -> mTLS to the destination's sidecar, expecting its identity."""
    out = current_outbound(rt, index, started_with)
    caller = caller_of(sock, want_uid=bool(out.allowed_uids))
    attempt = Attempt(
        rt, "outbound", listener=local_name(sock), src=caller.address, dst=out.service
    )
    try:
        problem = local_caller_problem(caller, allowed_uids=out.allowed_uids or None)
        if problem:
            attempt.deny(Reason.CALLER_NOT_LOCAL, problem)
            close_socket(sock)
            return
        contexts = admit(rt, attempt, sock)
        if contexts is None:
            return
        creds = contexts.credentials
        native = native_route(creds.policy, out.service)
        if native is not None:
            await native_outbound(rt, attempt, sock, native, creds.policy_version)
            return
        pre = may_call_decision(creds.policy, out.service, policy_version=creds.policy_version)
        target = out.address or creds.policy.address_of(out.service)
        if not pre.allowed or target is None:
            attempt.deny(
                pre.reason if not pre.allowed else Reason.DESTINATION_UNKNOWN,
                pre.detail
                if not pre.allowed
                else f"no address for {out.service}: not in the service registry (services.{out.service}"
                ".addresses) and no outbound address override",
            )
            close_socket(sock)
            return
        await mesh_outbound(
            rt, attempt, sock, contexts, out.service, target, pre, tunnel=out.tunnel
        )
    except asyncio.CancelledError:
        attempt.abandon()
        raise


async def mesh_outbound(
    rt: Runtime,
    attempt: Attempt,
    sock: socket.socket,
    contexts: TlsContexts,
    service: str,
    target: HostPort,
    pre: ConnDecision,
    *,
    tunnel: bool = True,
) -> None:
    """The outbound pipeline once the destination is known and the call pre-authorized: as a
    stream of a tunnel to `target` (unless `tunnel` is False or tunnels are off), or over
    mutual TLS of its own; either way the server is checked to be `service`, then relayed."""
    attempt.dst = str(target)
    plain = await accept_plain(attempt, sock)
    if plain is None:
        return
    if (
        tunnel
        and contexts.tunnel_client is not None
        and await tunnel_outbound(rt, attempt, plain, contexts, service, target, pre)
    ):
        return
    t0 = time.monotonic()
    identity = str(SpiffeId.for_service(contexts.credentials.spiffe_id.trust_domain, service))
    address = str(target)
    tickets = contexts.tickets if contexts.resumption else None
    session = None
    if tickets is not None:
        session = tickets.get(
            identity,
            address,
            now=datetime.now(UTC),
            usable=lambda peer: rt.revocations.check(peer) is None,
        )

    def client_stream() -> TlsStream:
        return TlsStream(
            contexts.client,
            server_side=False,
            session=session,
            peers=contexts.peers,
            # Reading a session costs a copy of it in CPython (~0.3 ms with OpenSSL 3), so a
            # ticket is captured only when there is none to offer; stateless tickets resume
            # many times, and a refused one (the server's credentials changed) is replaced.
            watch_tickets=tickets is not None and session is None,
        )

    tls = await dial(rt, target, client_stream)
    if isinstance(tls, tuple):
        reason, detail = tls
        plain.close()
        attempt.finish(pre, bytes_in=0, bytes_out=0, close_reason=reason, detail=detail)
        return
    decision = await outbound_decision(rt, attempt, tls, contexts, service, target, t0)
    if not decision.allowed:
        if tickets is not None:
            tickets.forget(identity, address)
        plain.close()
        return
    peer = attempt.peer
    if tickets is not None and peer is not None:
        if session is not None and not peer.resumed:
            tickets.forget(identity, address)  # refused: the next connection captures a new one
        elif session is None:
            _keep_tickets(tickets, tls, identity, address, peer)
    await relay_connection(rt, attempt, decision, plain, tls)


def _keep_tickets(
    tickets: TicketStore, tls: TlsStream, identity: str, address: str, peer: PeerInfo
) -> None:
    """Keep the ticket the authorized server sends (now, or when it arrives) for next time."""

    def keep(session: ssl.SSLSession) -> None:
        tickets.put(identity, address, session, peer)

    if tls.new_session is not None:
        keep(tls.new_session)
    else:
        tls.on_ticket = keep
