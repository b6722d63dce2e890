"""Per-connection flows of a sidecar: inbound (mTLS in, plaintext to the local service) and
outbound (plaintext from the local service, mTLS to the destination's sidecar).

Each flow decides before any byte moves: caller, limits, credentials, TLS handshake and
authorization; a denial is recorded at decision time and no byte reaches the upstream. An allowed
connection is relayed and recorded when it closes. Every log line carries the conn id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from netshield.authz import ConnDecision, authorize_inbound, authorize_outbound, may_call_decision
from netshield.net.callers import caller_of, local_caller_problem
from netshield.net.relay import RelayHandle, relay
from netshield.net.streams import PlainStream, Stream, TlsHandshakeError, TlsStream
from netshield.netaddr import HostPort
from netshield.reasons import Reason
from netshield.record import ConnectionRecord, WafOutcome, new_conn_id, rfc3339
from netshield.sidecar.config import InboundConfig, OutboundConfig
from netshield.sidecar.livetable import LiveConnection
from netshield.sidecar.native import native_outbound, native_route
from netshield.sidecar.runtime import Runtime
from netshield.tls.contexts import TlsContexts
from netshield.tls.peer import PeerInfo

log = logging.getLogger("netshield.sidecar")

Direction = Literal["inbound", "outbound"]
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
    recorded: bool = False

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
    ) -> None:
        if self.recorded:
            return
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
        )
        self.rt.emit(record, self.handshake_seconds)

    def deny(self, reason: Reason, detail: str) -> None:
        log.info("conn=%s %s deny %s: %s", self.conn_id, self.direction, reason.value, detail)
        self._record(
            decision="deny",
            reason=reason,
            detail=detail,
            mode="enforce",
            bytes_in=0,
            bytes_out=0,
            close_reason=reason,
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


def admit(rt: Runtime, attempt: Attempt, sock: socket.socket) -> TlsContexts | None:
    """Shutdown, credentials and the connection limit; when refused, records the denial and
    closes `sock`."""
    contexts = _admit(rt, attempt)
    if contexts is None:
        close_socket(sock)
    return contexts


def _admit(rt: Runtime, attempt: Attempt) -> TlsContexts | None:
    contexts = rt.holder.current()
    attempt.contexts = contexts
    limit = rt.config.limits.max_connections
    if rt.stopping.is_set():
        attempt.deny(Reason.DRAINED, "the sidecar is shutting down and accepts no new connections")
        return None
    if contexts is None:
        attempt.deny(
            Reason.NO_CREDENTIALS,
            "this sidecar holds no valid certificate (not attested yet, or it "
            "expired while the CAS was unreachable)",
        )
        return None
    live = LiveConnection(
        conn_id=attempt.conn_id,
        direction=attempt.direction,
        listener=attempt.listener,
        src=attempt.src,
        dst=attempt.dst,
        started=rfc3339(attempt.started),
    )
    if not rt.table.try_add(live):
        attempt.deny(
            Reason.CONNECTION_LIMIT,
            f"{rt.table.count()} connections are open and limits.max_connections is {limit}",
        )
        return None
    attempt.live = live
    return contexts


async def dial(rt: Runtime, target: HostPort, factory: Callable[[], S]) -> S | tuple[Reason, str]:
    """Connect to `target`; the stream, or why not."""
    loop = asyncio.get_running_loop()
    timeout = rt.config.limits.connect_timeout.total_seconds()
    try:
        _transport, stream = await asyncio.wait_for(
            loop.create_connection(factory, target.host, target.port), timeout
        )
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
    """The inbound pipeline for an accepted socket: admit, terminate mTLS, authorize the caller,
    then relay plaintext to `upstream_of()` (read after the decision, so SIGHUP applies)."""
    try:
        contexts = admit(rt, attempt, sock)
        if contexts is None:
            return
        loop = asyncio.get_running_loop()
        try:
            _t, tls = await loop.connect_accepted_socket(
                lambda: TlsStream(contexts.server, server_side=True), sock
            )
        except OSError as err:
            attempt.deny(Reason.PEER_RESET, f"the caller went away before the handshake ({err})")
            close_socket(sock)
            return
        t0 = time.monotonic()
        try:
            attempt.peer = await tls.handshake(rt.config.limits.handshake_timeout.total_seconds())
        except TlsHandshakeError as err:
            attempt.deny(err.failure.reason, err.failure.detail)
            return
        attempt.handshake_seconds = time.monotonic() - t0
        creds = contexts.credentials
        decision = authorize_inbound(
            creds.policy, attempt.peer, rt.revocations.check, policy_version=creds.policy_version
        )
        if not decision.allowed:
            attempt.deny(decision.reason, decision.detail)
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


def registry_address(policy: Mapping[str, Any], service: str) -> HostPort | None:
    """The first address the service registry (from the CAS) lists for `service`."""
    registry = policy.get("registry", {})
    entry = registry.get(service) if isinstance(registry, Mapping) else None
    addresses = entry.get("addresses", []) if isinstance(entry, Mapping) else []
    for text in addresses:
        with contextlib.suppress(ValueError):
            return HostPort.parse(str(text), allow_zero=False)
    return None


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
    caller = caller_of(sock)
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
        target = out.address or registry_address(creds.policy, out.service)
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
        await mesh_outbound(rt, attempt, sock, contexts, out.service, target, pre)
    except asyncio.CancelledError:
        attempt.abandon()
        raise


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


async def mesh_outbound(
    rt: Runtime,
    attempt: Attempt,
    sock: socket.socket,
    contexts: TlsContexts,
    service: str,
    target: HostPort,
    pre: ConnDecision,
) -> None:
    """The outbound pipeline once the destination is known and the call pre-authorized: open
    mutual TLS to `target`, check that the server is `service`, then relay."""
    creds = contexts.credentials
    attempt.dst = str(target)
    plain = await accept_plain(attempt, sock)
    if plain is None:
        return
    t0 = time.monotonic()
    tls = await dial(rt, target, lambda: TlsStream(contexts.client, server_side=False))
    if isinstance(tls, tuple):
        reason, detail = tls
        plain.close()
        attempt.finish(pre, bytes_in=0, bytes_out=0, close_reason=reason, detail=detail)
        return
    try:
        attempt.peer = await tls.handshake(rt.config.limits.handshake_timeout.total_seconds())
    except TlsHandshakeError as err:
        attempt.deny(err.failure.reason, f"{service} at {target}: {err.failure.detail}")
        plain.close()
        return
    attempt.handshake_seconds = time.monotonic() - t0
    decision = authorize_outbound(
        creds.policy,
        service,
        attempt.peer,
        rt.revocations.check,
        policy_version=creds.policy_version,
    )
    if not decision.allowed:
        attempt.deny(decision.reason, decision.detail)
        tls.close()
        plain.close()
        return
    await relay_connection(rt, attempt, decision, plain, tls)
