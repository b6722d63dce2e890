"""The pieces every sidecar flow shares: `Attempt` (what is known about one connection, turned
into exactly one record), admission (shutdown, credentials, the connection limit; inbound
connections take their slot only once authorized, `admit_inbound` then `enroll`), dialling,
wrapping the local caller's socket, and relaying two streams until they close.

Used by the mesh flows (`netshield.sidecar.flows`), the native routes (`netshield.sidecar.native`)
and transparent capture (`netshield.sidecar.transparent`); it imports none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

from netshield.authz import ConnDecision
from netshield.net.relay import RelayHandle, relay
from netshield.net.streams import PlainStream, Stream
from netshield.netaddr import HostPort
from netshield.reasons import Reason
from netshield.record import ConnectionRecord, WafOutcome, new_conn_id, rfc3339
from netshield.sidecar.livetable import LiveConnection
from netshield.sidecar.runtime import Runtime
from netshield.tls.contexts import TlsContexts
from netshield.tls.failures import CAPACITY_ALERT
from netshield.tls.peer import PeerInfo

log = logging.getLogger("netshield.sidecar")

Direction = Literal["inbound", "outbound", "tunnel"]
S = TypeVar("S", bound=Stream)


@dataclass
class Attempt:
    """What is known about one connection so far; turns into exactly one record."""

    rt: Runtime
    direction: Direction
    listener: str
    src: str
    dst: str
    original_dst: str | None = None  # transparent mode: the address the caller dialled
    conn_id: str = field(default_factory=new_conn_id)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    t0: float = field(default_factory=time.monotonic)
    peer: PeerInfo | None = None
    contexts: TlsContexts | None = None
    handshake_seconds: float | None = None
    live: LiveConnection | None = None
    waf: WafOutcome | None = None  # native routes with the WAF on
    tunnel_id: str | None = None  # carried as a stream of this tunnel
    stream_id: int | None = None
    streams: int | None = None  # direction "tunnel": streams carried
    recorded: bool = False
    refused: tuple[Reason, str] | None = None  # the denial's reason and detail, once denied

    def __post_init__(self) -> None:
        self.rt.metrics.connection_opened(self.direction)

    def _record(
        self,
        *,
        decision: Literal["allow", "deny"],
        reason: Reason,
        detail: str,
        mode: Literal["enforce", "audit"],
        bytes_in: int,
        bytes_out: int,
        close_reason: Reason,
    ) -> bool:
        """Record the connection once; True if its record was written now (not folded)."""
        if self.recorded:
            return False
        self.recorded = True
        if self.live is not None:
            self.rt.table.remove(self.live.conn_id)
        peer, creds = self.peer, (self.contexts.credentials if self.contexts else None)
        record = ConnectionRecord(
            ts=rfc3339(self.started),
            conn_id=self.conn_id,
            direction=self.direction,
            listener=self.listener,
            src=self.src,
            dst=self.dst,
            original_dst=self.original_dst,
            local_identity=str(creds.spiffe_id) if creds else None,
            peer_identity=str(peer.spiffe_id) if peer and peer.spiffe_id else None,
            tls_version=peer.tls_version if peer else None,
            cipher=peer.cipher if peer else None,
            resumed=peer.resumed if peer else False,
            decision=decision,
            reason=reason.value,
            detail=detail,
            mode=mode,
            waf=self.waf,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration_ms=round((time.monotonic() - self.t0) * 1000, 3),
            close_reason=close_reason.value,
            peer_serial=format(peer.serial, "x") if peer and peer.serial is not None else None,
            peer_epoch=peer.epoch if peer else None,
            policy_version=creds.policy_version if creds else None,
            proxy=self.rt.proxy,
            tunnel_id=self.tunnel_id,
            stream_id=self.stream_id,
            streams=self.streams,
        )
        return self.rt.emit(record, self.handshake_seconds)

    def become_tunnel(self, tunnel_id: str) -> None:
        """The connection turned out to be a tunnel (ALPN): its record and its entry in the
        live table say so from now on."""
        if self.direction == "tunnel":
            return
        self.rt.metrics.connection_moved(self.direction, "tunnel")
        self.direction = "tunnel"
        if self.live is not None:
            self.live.direction = "tunnel"
            self.live.tunnel_id = tunnel_id
            self.rt.table.became_tunnel(self.conn_id, tunnel_id)
        self.conn_id = self.tunnel_id = tunnel_id
        self.streams = 0

    def deny(self, reason: Reason, detail: str) -> None:
        """Record the denial; its log line only when its record is written (a flood's denials
        folded into an aggregate do not flood the diagnostic log either)."""
        if not self.recorded:
            self.refused = (reason, detail)
        written = self._record(
            decision="deny",
            reason=reason,
            detail=detail,
            mode="enforce",
            bytes_in=0,
            bytes_out=0,
            close_reason=reason,
        )
        if written:
            log.info("conn=%s %s deny %s: %s", self.conn_id, self.direction, reason.value, detail)

    def close_denied(
        self,
        reason: Reason,
        detail: str,
        *,
        bytes_in: int,
        bytes_out: int,
        close_reason: Reason,
    ) -> None:
        """A connection that carried traffic but ended refused (a WAF route that blocked or
        refused one of its requests): a deny record with the bytes that did move."""
        log.info("conn=%s %s deny %s: %s", self.conn_id, self.direction, reason.value, detail)
        self._record(
            decision="deny",
            reason=reason,
            detail=detail,
            mode="enforce",
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            close_reason=close_reason,
        )

    def finish(
        self,
        decision: ConnDecision,
        *,
        bytes_in: int,
        bytes_out: int,
        close_reason: Reason,
        detail: str = "",
    ) -> None:
        log.debug(
            "conn=%s %s closed %s in=%d out=%d",
            self.conn_id,
            self.direction,
            close_reason.value,
            bytes_in,
            bytes_out,
        )
        text = f"{decision.detail}; {detail}" if detail else decision.detail
        self._record(
            decision="allow",
            reason=decision.reason,
            detail=text,
            mode=decision.mode,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            close_reason=close_reason,
        )

    def abandon(self) -> None:
        """The flow was cancelled (shutdown) before it decided: record that, once."""
        self._record(
            decision="deny",
            reason=Reason.DRAINED,
            detail="the sidecar shut down during the handshake",
            mode="enforce",
            bytes_in=0,
            bytes_out=0,
            close_reason=Reason.DRAINED,
        )


def close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_socket(sock: socket.socket) -> None:
    """Close with a TCP reset: nothing lingers in the kernel for a refused flood."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    close_socket(sock)


def admit(rt: Runtime, attempt: Attempt, sock: socket.socket) -> TlsContexts | None:
    """Shutdown, credentials and a slot under limits.max_connections; when refused, records the
    denial and closes `sock`."""
    contexts = _admit(rt, attempt)
    if isinstance(contexts, Reason):
        close_socket(sock)
        return None
    if not enroll(rt, attempt):
        close_socket(sock)
        return None
    return contexts


async def admit_inbound(rt: Runtime, attempt: Attempt, sock: socket.socket) -> TlsContexts | None:
    """Admission of an unauthenticated inbound connection: shutdown, credentials and room under
    limits.max_connections, without taking a slot (it takes one once authorized, `enroll`).
    When refused, records the denial and closes `sock`; at capacity it first writes
    `CAPACITY_ALERT`, so that the calling sidecar records PEER_AT_CAPACITY."""
    contexts = _admit(rt, attempt)
    if contexts is Reason.CONNECTION_LIMIT:
        await refuse(rt, sock, CAPACITY_ALERT)
        return None
    if isinstance(contexts, Reason):
        close_socket(sock)
        return None
    return contexts


def _admit(rt: Runtime, attempt: Attempt) -> TlsContexts | Reason:
    contexts = rt.holder.current()
    attempt.contexts = contexts
    limit = rt.config.limits.max_connections
    if rt.stopping.is_set():
        attempt.deny(Reason.DRAINED, "the sidecar is shutting down and accepts no new connections")
        return Reason.DRAINED
    if contexts is None:
        attempt.deny(
            Reason.NO_CREDENTIALS,
            "this sidecar holds no valid certificate (not attested yet, or it "
            "expired while the CAS was unreachable)",
        )
        return Reason.NO_CREDENTIALS
    if rt.table.connections() >= limit:  # tunnels do not count: their streams do
        _deny_limit(rt, attempt)
        return Reason.CONNECTION_LIMIT
    return contexts


def _deny_limit(rt: Runtime, attempt: Attempt) -> None:
    attempt.deny(
        Reason.CONNECTION_LIMIT,
        f"{rt.table.connections()} connections are open and limits.max_connections is "
        f"{rt.config.limits.max_connections}",
    )


def enroll(rt: Runtime, attempt: Attempt) -> bool:
    """Take a slot under limits.max_connections for `attempt` (it then shows in /connections and
    can be closed from outside); False, with a CONNECTION_LIMIT denial recorded, if none is left."""
    live = LiveConnection(
        conn_id=attempt.conn_id,
        direction=attempt.direction,
        listener=attempt.listener,
        src=attempt.src,
        dst=attempt.dst,
        started=rfc3339(attempt.started),
        peer=attempt.peer,
    )
    if not rt.table.try_add(live):
        _deny_limit(rt, attempt)
        return False
    attempt.live = live
    return True


MAX_REFUSING = 256
"""Refused sockets that may linger at once (a flood of refusals is closed straight away)."""
REFUSE_LINGER_SECONDS = 1.0


async def refuse(rt: Runtime, sock: socket.socket, message: bytes) -> None:
    """Write `message` (a few bytes), shut the output down and read the peer's bytes until it
    closes or `REFUSE_LINGER_SECONDS` pass, so that a TCP reset does not destroy the message."""
    if rt.refusing >= MAX_REFUSING:
        close_socket(sock)
        return
    rt.refusing += 1
    loop = asyncio.get_running_loop()
    try:
        with contextlib.suppress(OSError):
            sock.send(message)
            sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(REFUSE_LINGER_SECONDS):
                while await loop.sock_recv(sock, 4096):
                    pass
    except TimeoutError:
        pass
    finally:
        rt.refusing -= 1
        close_socket(sock)


async def dial(
    rt: Runtime, target: HostPort, factory: Callable[[], S], *, sock: socket.socket | None = None
) -> S | tuple[Reason, str]:
    """Connect to `target` (on `sock`, a non-blocking TCP socket not yet connected, when given:
    it may be bound already); the stream, or why not."""
    loop = asyncio.get_running_loop()
    timeout = rt.config.limits.connect_timeout.total_seconds()
    try:
        async with asyncio.timeout(timeout):
            if sock is None:
                _transport, stream = await loop.create_connection(factory, target.host, target.port)
            else:
                await loop.sock_connect(sock, (target.host, target.port))
                _transport, stream = await loop.create_connection(factory, sock=sock)
    except TimeoutError:
        return (
            Reason.CONNECT_TIMEOUT,
            f"{target} did not accept the connection within {timeout:g} s",
        )
    except OSError as err:
        return Reason.UPSTREAM_UNREACHABLE, f"{target}: {err.strerror or err}"
    return stream


async def relay_connection(
    rt: Runtime, attempt: Attempt, decision: ConnDecision, downstream: Stream, upstream: Stream
) -> None:
    handle = RelayHandle()
    assert attempt.live is not None
    attempt.live.peer = attempt.peer
    attempt.live.closer = handle.close
    attempt.live.counters = lambda: (handle.bytes_up, handle.bytes_down)
    if attempt.live.close_reason is not None:  # revoked or drained while we were deciding
        handle.close(attempt.live.close_reason)
    result = await relay(
        downstream,
        upstream,
        idle_timeout=rt.config.limits.idle_timeout.total_seconds(),
        handle=handle,
    )
    attempt.finish(
        decision,
        bytes_in=result.bytes_up,
        bytes_out=result.bytes_down,
        close_reason=result.close_reason,
        detail=result.detail,
    )


async def relay_plain_to(
    rt: Runtime, attempt: Attempt, decision: ConnDecision, downstream: Stream, target: HostPort
) -> None:
    """Dial `target` in plaintext and relay `downstream` to it; if the dial fails, close
    `downstream` and record the allowed connection with the dial's close reason."""
    upstream = await dial(rt, target, PlainStream)
    if isinstance(upstream, tuple):
        reason, detail = upstream
        downstream.close()
        attempt.finish(decision, bytes_in=0, bytes_out=0, close_reason=reason, detail=detail)
        return
    await relay_connection(rt, attempt, decision, downstream, upstream)


async def accept_plain(attempt: Attempt, sock: socket.socket) -> PlainStream | None:
    """Wrap the local caller's accepted socket; None (and a deny record) if it went away."""
    loop = asyncio.get_running_loop()
    try:
        _t, plain = await loop.connect_accepted_socket(PlainStream, sock)
    except OSError as err:
        attempt.deny(Reason.PEER_RESET, f"the local caller went away ({err})")
        close_socket(sock)
        return None
    return plain


__all__ = [
    "Attempt",
    "Direction",
    "accept_plain",
    "admit",
    "admit_inbound",
    "close_socket",
    "dial",
    "enroll",
    "refuse",
    "relay_connection",
    "relay_plain_to",
    "reset_socket",
]
