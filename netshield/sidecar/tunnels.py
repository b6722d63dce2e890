"""Tunnels in the sidecar: outbound connections carried as streams of pooled tunnels to the
destination's sidecar, and the inbound side that authorizes and relays each stream of a tunnel.

A tunnel is one mutual-TLS connection that negotiated `TUNNEL_ALPN`, opened and checked by the
same handshake-and-authorize step as any mesh connection (`sidecar.handshake`); it gets a record
of its own (`direction: tunnel`) when it closes, and an entry in the live table, so a revocation,
an epoch raise or its peer's certificate expiring closes it with all its streams. Every stream is
an application connection with its own record (`tunnel_id`, `stream_id`), authorized again
against the policy in force when it opens: outbound, that the tunnel's server is the destination
and may be called; inbound, that the tunnel's client may call this service and asked for it.
A destination that does not select the ALPN id (a sidecar without tunnels) gets this connection
as an ordinary one, and one connection per stream for `DIRECT_SECONDS`; so does an outbound
listener with `tunnel: false`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from netshield.authz import ConnDecision
from netshield.net.streams import PlainStream, Stream, TlsStream
from netshield.netaddr import HostPort
from netshield.reasons import Reason, reason
from netshield.record import rfc3339
from netshield.sidecar.connection import Attempt, dial, enroll, relay_connection
from netshield.sidecar.handshake import decide_inbound, decide_outbound, outbound_decision
from netshield.sidecar.livetable import LiveConnection
from netshield.sidecar.runtime import Runtime
from netshield.tls.contexts import TUNNEL_ALPN, TlsContexts
from netshield.tls.failures import TlsFailure
from netshield.tunnel.link import Refused, Retry, Tunnel, TunnelStream, tunnel_id_of
from netshield.tunnel.pool import Full
from netshield.tunnel.protocol import TunnelFull, TunnelProtocol, TunnelSettings

log = logging.getLogger("netshield.sidecar")

DIRECT_SECONDS = 60.0
"""How long a destination that does not speak tunnels gets one connection per stream before
it is asked again (so an upgraded sidecar is picked up)."""
OPEN_ATTEMPTS = 2
"""Tunnels a stream is tried on when one goes away before answering (GOAWAY raced it)."""
SUPERVISE_TICK = 1.0
_UPSTREAM_FAILURES = (Reason.UPSTREAM_UNREACHABLE, Reason.CONNECT_TIMEOUT)

__all__ = ["retire_tunnels", "serve_tunnel", "settings_of", "tunnel_outbound"]


def retire_tunnels(rt: Runtime) -> int:
    """After a credential swap: outbound tunnels opened with older credentials take no new
    streams (GOAWAY; theirs finish there); new streams go to fresh tunnels that present the new
    certificate. Returns how many were retired."""
    current = rt.holder.current()
    keep = id(current) if current is not None else None
    retired = rt.tunnels.retire(lambda key: isinstance(key, tuple) and key[2] == keep)
    for tunnel in retired:
        tunnel.drain(Reason.DRAINED, "this sidecar's credentials were renewed")
    return len(retired)


def settings_of(rt: Runtime) -> TunnelSettings:
    t = rt.config.tunnels
    return TunnelSettings(
        max_streams=t.max_streams,
        stream_window=t.stream_window,
        connection_window=min(max(16 << 20, 4 * t.stream_window), (1 << 31) - 1),
    )


# --- outbound ----------------------------------------------------------------------------------


@dataclass
class _Direct:
    """The dial's outcome when it brought no tunnel: the denial is recorded on the attempt
    (tls None), or the destination answered without tunnels (this TLS stream is the
    connection, authorized by `decision`)."""

    tls: TlsStream | None
    decision: ConnDecision | None = None


async def tunnel_outbound(
    rt: Runtime,
    attempt: Attempt,
    plain: Stream,
    contexts: TlsContexts,
    service: str,
    target: HostPort,
    pre: ConnDecision,
) -> bool:
    """Carry the caller's connection to `service` at `target` (pre-authorized by `pre`) as a
    tunnel stream, recorded on `attempt`. False when it must go one connection per stream (the
    caller does that)."""
    key = (service, str(target), id(contexts))  # a credential swap starts new tunnels
    limits = rt.config.tunnels
    # an open stream is answered once the destination connected to its upstream: the caller's
    # budget for that is what it would have for a connection of its own
    answer_timeout = rt.config.limits.connect_timeout.total_seconds()
    for _ in range(OPEN_ATTEMPTS):
        got = await rt.tunnels.acquire(
            key,
            lambda: _open_tunnel(rt, attempt, contexts, service, target, pre),
            max_per_peer=limits.max_per_peer,
        )
        if got is None:
            return False
        if isinstance(got, Full):
            attempt.deny(
                Reason.TUNNEL_LIMIT,
                f"{got.open} tunnel(s) to {service} at {target} carry {got.streams} streams "
                f"(tunnels.max_per_peer {limits.max_per_peer}, tunnels.max_streams "
                f"{limits.max_streams})",
            )
            plain.close()
            return True
        if isinstance(got, _Direct):
            if got.tls is None or got.decision is None:
                plain.close()  # denied: recorded by the handshake step
                return True
            rt.tunnels.go_direct(key, DIRECT_SECONDS)
            log.info(
                "conn=%s %s at %s does not speak tunnels: one connection per stream for %g s",
                attempt.conn_id,
                service,
                target,
                DIRECT_SECONDS,
            )
            await relay_connection(rt, attempt, got.decision, plain, got.tls)
            return True
        tunnel = got
        peer = tunnel.tls.peer
        assert peer is not None
        attempt.peer = peer
        decision = decide_outbound(rt, contexts, service, peer)
        if not decision.allowed:
            attempt.deny(decision.reason, decision.detail)
            plain.close()
            return True
        try:
            stream = tunnel.open(service)
        except TunnelFull:
            continue
        attempt.tunnel_id, attempt.stream_id = tunnel.tunnel_id, stream.stream_id
        if attempt.live is not None:
            attempt.live.tunnel_id, attempt.live.stream_id = tunnel.tunnel_id, stream.stream_id
        answer = await stream.answer(answer_timeout)
        if answer is None:
            await relay_connection(rt, attempt, decision, plain, stream)
            return True
        if isinstance(answer, Refused):
            code = reason(answer.reason) if answer.reason else None
            if code is Reason.CONNECTION_LIMIT:  # as the TLS alert of a full sidecar says
                attempt.deny(
                    Reason.PEER_AT_CAPACITY,
                    f"{service} at {target} is at capacity (limits.max_connections): it refused "
                    "the stream; try again later",
                )
                plain.close()
                return True
            if code in _UPSTREAM_FAILURES:  # allowed there, its upstream failed: as without tunnels
                attempt.finish(
                    decision,
                    bytes_in=0,
                    bytes_out=0,
                    close_reason=code,
                    detail=f"{service} at {target} could not reach its upstream",
                )
                plain.close()
                return True
            why = code or Reason.STREAM_REFUSED
            attempt.deny(
                why,
                f"{service} at {target} refused the stream ({answer.status} "
                f"{answer.reason or 'without a reason'}); its sidecar's records say why",
            )
            plain.close()
            return True
        assert isinstance(answer, Retry)
        if answer.timed_out:  # the tunnel may be cut off: as a connect that timed out, no retry
            attempt.finish(
                decision,
                bytes_in=0,
                bytes_out=0,
                close_reason=Reason.CONNECT_TIMEOUT,
                detail=f"{service} at {target} did not accept the connection within "
                f"{answer_timeout:g} s (no answer on tunnel {tunnel.tunnel_id})",
            )
            plain.close()
            return True
        log.debug(
            "conn=%s stream %d: %s; trying again", attempt.conn_id, stream.stream_id, answer.why
        )
    attempt.deny(
        Reason.STREAM_REFUSED,
        f"{service} at {target}: the tunnel went away before it answered, {OPEN_ATTEMPTS} times "
        "(its sidecar's records say why)",
    )
    plain.close()
    return True


async def _open_tunnel(
    rt: Runtime,
    attempt: Attempt,
    contexts: TlsContexts,
    service: str,
    target: HostPort,
    pre: ConnDecision,
) -> Tunnel | _Direct:
    """Dial `target`, offer the tunnel ALPN id and check the server as any mesh connection
    (on `attempt`, which records a denial); a tunnel, or the connection as it is."""
    ctx = contexts.tunnel_client
    assert ctx is not None
    t0 = time.monotonic()
    tls = await dial(rt, target, lambda: TlsStream(ctx, server_side=False, peers=contexts.peers))
    if isinstance(tls, tuple):  # recorded as one connection per stream records it
        why, detail = tls
        attempt.finish(pre, bytes_in=0, bytes_out=0, close_reason=why, detail=detail)
        return _Direct(None)
    decision = await outbound_decision(rt, attempt, tls, contexts, service, target, t0)
    if not decision.allowed:
        return _Direct(None)
    if tls.alpn != TUNNEL_ALPN:
        return _Direct(tls, decision)
    tunnel_id = tunnel_id_of(tls)
    record = Attempt(
        rt,
        "tunnel",
        listener="tunnel",
        src=_sockname(tls),
        dst=str(target),
        conn_id=tunnel_id,
        peer=tls.peer,
        contexts=contexts,
        handshake_seconds=attempt.handshake_seconds,
        tunnel_id=tunnel_id,
        streams=0,
    )
    tunnel = Tunnel(tls, TunnelProtocol(client=True, settings=settings_of(rt)), tunnel_id=tunnel_id)
    record.live = _live(record, tunnel)
    rt.table.add_tunnel(record.live)
    rt.spawn(_supervise(rt, record, tunnel, decision))
    log.info("tunnel=%s to %s at %s open", tunnel_id, service, target)
    return tunnel


# --- inbound -----------------------------------------------------------------------------------


async def serve_tunnel(
    rt: Runtime,
    attempt: Attempt,
    tls: TlsStream,
    decision: ConnDecision,
    upstream_of: Callable[[], HostPort],
) -> None:
    """Serve the streams of an accepted, authorized tunnel (`attempt` is its record) until it
    closes."""
    tunnel_id = attempt.conn_id
    listener, src = attempt.listener, attempt.src
    peer = tls.peer
    assert peer is not None

    original = attempt.original_dst  # transparent capture: where the tunnel was going

    def on_request(stream: TunnelStream, authority: str, _peer_id: str | None) -> None:
        rt.spawn(
            _inbound_stream(
                rt, stream.tunnel, stream, authority, listener, src, upstream_of, original
            )
        )

    tunnel = Tunnel(
        tls,
        TunnelProtocol(client=False, settings=settings_of(rt)),
        tunnel_id=tunnel_id,
        on_request=on_request,
    )
    if attempt.live is None:  # authorized: the tunnel shows in the table (not counted)
        attempt.live = _live(attempt, tunnel)
        rt.table.add_tunnel(attempt.live)
    else:
        attempt.live.peer = peer
        attempt.live.closer = tunnel.close
        attempt.live.counters = lambda: _counters(tunnel)
    if rt.stopping.is_set():
        tunnel.drain(Reason.DRAINED)
    await _supervise(rt, attempt, tunnel, decision)


async def _inbound_stream(
    rt: Runtime,
    tunnel: Tunnel,
    stream: TunnelStream,
    authority: str,
    listener: str,
    src: str,
    upstream_of: Callable[[], HostPort],
    original_dst: str | None = None,
) -> None:
    """One stream of an inbound tunnel: admit, authorize against the policy in force now, dial
    the local service, answer, relay; exactly one record."""
    peer = tunnel.tls.peer
    attempt = Attempt(
        rt,
        "inbound",
        listener=listener,
        src=src,
        dst=str(upstream_of()),
        original_dst=original_dst,
        peer=peer,
        tunnel_id=tunnel.tunnel_id,
        stream_id=stream.stream_id,
    )
    try:
        refusal = _admit_stream(rt, attempt, authority)
        if refusal is not None:
            status, why = refusal
            tunnel.refuse(stream, status, why)
            return
        contexts = attempt.contexts
        assert contexts is not None and peer is not None and attempt.live is not None
        attempt.live.peer = peer
        attempt.live.tunnel_id, attempt.live.stream_id = tunnel.tunnel_id, stream.stream_id
        decision = decide_inbound(rt, contexts, peer)
        if not decision.allowed:
            attempt.deny(decision.reason, decision.detail)
            tunnel.refuse(stream, 403, decision.reason)
            return
        if decision.mode == "audit":
            log.warning("conn=%s inbound %s", attempt.conn_id, decision.detail)
        target = upstream_of()
        attempt.dst = str(target)
        upstream = await dial(rt, target, PlainStream)
        if isinstance(upstream, tuple):
            why, detail = upstream
            tunnel.refuse(stream, 502, why)
            attempt.finish(decision, bytes_in=0, bytes_out=0, close_reason=why, detail=detail)
            return
        tunnel.accept(stream)
        await relay_connection(rt, attempt, decision, stream, upstream)
    except asyncio.CancelledError:
        stream.abort()
        attempt.abandon()
        raise


def _admit_stream(rt: Runtime, attempt: Attempt, authority: str) -> tuple[int, Reason] | None:
    """What `admit` checks for a connection, for a stream: shutdown, credentials, the limit,
    and that it asks for this service. The refusal's status and reason (recorded), or None."""
    service = rt.config.service
    if rt.stopping.is_set():
        attempt.deny(Reason.DRAINED, "the sidecar is shutting down and accepts no new streams")
        return 503, Reason.DRAINED
    contexts = rt.holder.current()
    attempt.contexts = contexts
    if contexts is None:
        attempt.deny(
            Reason.NO_CREDENTIALS,
            "this sidecar holds no valid certificate (not attested yet, or it expired while the "
            "CAS was unreachable)",
        )
        return 503, Reason.NO_CREDENTIALS
    if authority != service:
        attempt.deny(
            Reason.DESTINATION_UNKNOWN,
            f"the stream asks for {authority[:80]!r}, but this sidecar serves {service}",
        )
        return 404, Reason.DESTINATION_UNKNOWN
    if not enroll(rt, attempt):  # a slot under limits.max_connections, recorded if none
        return 503, Reason.CONNECTION_LIMIT
    assert attempt.live is not None
    attempt.live.tunnel_id, attempt.live.stream_id = attempt.tunnel_id, attempt.stream_id
    return None


# --- both sides ----------------------------------------------------------------------------------


async def _supervise(rt: Runtime, record: Attempt, tunnel: Tunnel, decision: ConnDecision) -> None:
    """Own the tunnel until it closes: idle and lifetime limits, drain on shutdown; then its
    record (streams carried, bytes, why it closed)."""
    limits = rt.config.tunnels
    loop = asyncio.get_running_loop()
    idle = limits.idle_timeout.total_seconds()
    lifetime = limits.max_lifetime.total_seconds()
    tick = min(SUPERVISE_TICK, idle / 4)
    stopping = asyncio.ensure_future(rt.stopping.wait())
    try:
        while not tunnel.closed.done():
            waits: list[asyncio.Future[object]] = [tunnel.closed]  # type: ignore[list-item]
            if not stopping.done():
                waits.append(stopping)  # type: ignore[arg-type]
            await asyncio.wait(waits, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
            if tunnel.closed.done():
                break
            now = loop.time()
            if rt.stopping.is_set():
                tunnel.drain(Reason.DRAINED)
            elif now - tunnel.opened_at >= lifetime:
                tunnel.drain(Reason.TUNNEL_LIFETIME)
            elif tunnel.idle_since is not None and now - tunnel.idle_since >= idle:
                tunnel.drain(Reason.IDLE_TIMEOUT)
            if tunnel.draining and not tunnel.streams and not tunnel.closed.done():
                tunnel.tls.close()
                await asyncio.wait(
                    [tunnel.closed], timeout=rt.config.limits.drain_timeout.total_seconds() or 1
                )
                if not tunnel.closed.done():
                    tunnel.abort()
                    await asyncio.wait([tunnel.closed], timeout=1)
                break
    except asyncio.CancelledError:
        tunnel.abort()
        _record_tunnel(record, tunnel, decision, Reason.DRAINED)
        raise
    finally:
        stopping.cancel()
    close_reason = tunnel.close_reason or (
        tunnel.closed.result() if tunnel.closed.done() else Reason.CLOSED
    )
    _record_tunnel(record, tunnel, decision, close_reason)


def _record_tunnel(
    record: Attempt, tunnel: Tunnel, decision: ConnDecision, close_reason: Reason
) -> None:
    record.streams = tunnel.carried
    up, down = _counters(tunnel)
    failure: TlsFailure | None = tunnel.failure
    detail = f"{tunnel.carried} stream(s)"
    if tunnel.why:
        detail += f"; {tunnel.why}"
    if failure is not None:
        detail += f"; {failure.detail}"
    record.finish(decision, bytes_in=up, bytes_out=down, close_reason=close_reason, detail=detail)
    log.info(
        "tunnel=%s closed %s after %d stream(s)",
        tunnel.tunnel_id,
        close_reason.value,
        tunnel.carried,
    )


def _counters(tunnel: Tunnel) -> tuple[int, int]:
    return tunnel.bytes_sent, tunnel.tls.bytes_read


def _live(record: Attempt, tunnel: Tunnel) -> LiveConnection:
    return LiveConnection(
        conn_id=record.conn_id,
        direction="tunnel",
        listener=record.listener,
        src=record.src,
        dst=record.dst,
        started=_rfc3339(record),
        peer=record.peer,
        closer=tunnel.close,
        counters=lambda: _counters(tunnel),
        tunnel_id=tunnel.tunnel_id,
    )


def _rfc3339(attempt: Attempt) -> str:
    return rfc3339(attempt.started)


def _sockname(tls: TlsStream) -> str:
    transport = tls.transport
    name = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(name, tuple) and len(name) >= 2:
        return str(HostPort(name[0], name[1]))
    return "unknown"
